"""The rollout service: one Ray actor holding the base model once and one adapter per group.

Backends: ``hf`` (transformers + PEFT, CPU-friendly, the embedded default) and ``vllm`` (multi-LoRA).
"""
