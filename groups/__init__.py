"""One GRPO group = one LoRA adapter + its optimizer + its env + its reward functions, as a Ray actor.

Rebalancing actions that touch a single group (copy weights, perturb hyper-parameters) live here too.
"""
