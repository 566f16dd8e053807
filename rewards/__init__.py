"""Reward functions with TRL's signature ``fn(prompts, completions, **columns) -> list[float | None]``.

Built-ins (format, exact answer, numeric answer), the registry that turns a config entry
(``name``/``module:function`` + ``params``) into a callable, and weighted scoring that records a
raising function as a failure instead of crashing the run.
"""
