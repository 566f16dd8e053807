"""The engine: config schema and loading, base-model loading (incl. ``builtin:tiny``), the rollout
service, GRPO loss math, the coordinator loop, Parquet results and the CLI."""
