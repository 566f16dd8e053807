"""The engine: config schema and loading, base-model loading (incl. ``builtin:tiny``, shipped in
``assets/``), the rollout service (``rollout/``), the trainer service (``trainer/``: one base, one LoRA
slot per group, one fused GRPO step), GRPO loss math, the coordinator loop, Parquet results and the CLI."""
