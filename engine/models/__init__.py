"""Base models: resolving and loading a base (``base``), the built-in tiny model (``tiny``, its
corpus ``tiny_corpus``, shipped weights in ``assets/``), random-weight models for benchmarks
(``random``), group adapters of a run directory (``adapters``)."""
