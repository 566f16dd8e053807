"""The trainer service's core: one frozen base per device, one LoRA *slot* per group, one fused GRPO step.

- ``multi_lora``: ``MultiLoRALinear`` (the base projection once, each slot's low-rank path on its own
  rows) and ``MultiLoRAModel`` (installs it into a Hugging Face causal LM where PEFT would, routes rows).
- ``slots``: a slot's state (LoRA A/B in float32, its own AdamW and hyper-parameters), PEFT-format
  state dicts and adapter directories, copies between slots, checkpoint state.
- ``fused``: every group's GRPO update in one forward/backward per micro-batch, each group's loss
  exactly what it would be alone; a group with a non-finite loss or gradient is skipped alone.
"""
