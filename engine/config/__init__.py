"""Run configuration: the typed schema (``schema``), loading with overrides and clear errors
(``loading``), plain per-group plans and the envs / rewards built from them (``builders``), and the
fault injection tests use (``faults``). Imports nothing else of the engine."""
