"""The training loop: the coordinator (``coordinator``: the run, step by step, resume), the population
supervisor (``population``: rounds of turns, one fused update, one publish, recovery) and the
progress display (``progress``). The only part of the engine that imports ``groups``."""
