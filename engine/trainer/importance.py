"""Truncated importance sampling (TIS) between the rollout sampler and the trainer.

vLLM samples with its own kernels (bf16, fused LoRA), so its log-probs of a sampled token differ
from the trainer's for the same weights. The GRPO loss treats the samples as on-policy for the
trainer; TIS reweights each token's loss by how much more likely the trainer finds it than the
sampler did, truncated so a few tokens cannot dominate:

    w = min(exp(logp_trainer_old - logp_sampler), cap)          (token level)

Source: Yao et al., "Your efficient RL framework secretly brings you off-policy RL training" (2025),
as implemented by TRL's ``GRPOTrainer`` (``vllm_importance_sampling_correction``,
``vllm_importance_sampling_mode``, ``vllm_importance_sampling_clip_max``/``_min``, trl 1.16
grpo_trainer.py). Same modes and defaults as TRL, so numbers are comparable:
  - ``token_truncate``: per-token ratio clamped to [clip_min, clip_max];
  - ``token_mask``: per-token ratio set to 0 outside [clip_min, clip_max];
  - ``sequence_truncate`` / ``sequence_mask``: one ratio per sequence (sum of the token log-ratio
    differences), clamped or masked, broadcast over its tokens.
``logp_trainer_old`` is the trainer's log-prob at rollout time with no gradient (the PPO "old"
policy); the weights are constants of the loss: no gradient flows through them.
Usage in the loss (TRL does the same): ``per_token_loss = per_token_loss * w`` before aggregation.
Shapes: B completions, L completion length (padded); ``mask`` is 1 on completion tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _truncate(ratio: torch.Tensor, clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """Clamp the ratio into [clip_min, clip_max] (either bound may be None)."""
    return torch.clamp(ratio, min=clip_min, max=clip_max)


def _mask(ratio: torch.Tensor, clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """Zero the ratio where it falls outside [clip_min, clip_max]."""
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


IS_MODES: dict[str, tuple[bool, Callable]] = {  # name -> (sequence level?, bound)
    "token_truncate": (False, _truncate),
    "token_mask": (False, _mask),
    "sequence_truncate": (True, _truncate),
    "sequence_mask": (True, _mask),
}


@torch.no_grad()
def importance_weights(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    clip_max: float | None = 3.0,
    clip_min: float | None = None,
) -> torch.Tensor:
    """IS weights of the sampled tokens, detached. Inputs [B, L]; returns [B, L] (token modes) or
    [B, 1] (sequence modes), both broadcast against a [B, L] per-token loss.

    NaN sampler log-probs (none reported) count as agreement: weight 1, as in TRL.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r} (known: {', '.join(IS_MODES)})")
    sequence_level, bound = IS_MODES[mode]
    diff = torch.nan_to_num((trainer_logp.detach() - sampler_logp.detach()) * mask, nan=0.0)  # [B, L]
    if sequence_level:
        diff = diff.sum(dim=-1, keepdim=True)  # [B, 1]
    return bound(torch.exp(diff), clip_min, clip_max)
