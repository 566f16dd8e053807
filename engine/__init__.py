"""The engine, one sub-package per role; imports flow one way (a package imports only those before it):

- ``config``: the typed run configuration, loading with overrides, per-group plans, env/reward builders;
- ``models``: base models (``builtin:tiny`` with its shipped weights, ``builtin:random-*``), run adapters;
- ``rollout``: the rollout service (``hf`` and ``vllm`` backends), one adapter per group;
- ``trainer``: one frozen base per device, one LoRA slot per group, the fused GRPO step and its math;
- ``results``: Parquet tables, checkpoints, scores and the leaderboard, plots (may read ``groups``);
- ``loop``: the coordinator and the population supervisor (the only part that drives ``groups``' actors);
- ``cli``: the ``lorapop`` command.
"""
