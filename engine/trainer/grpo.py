"""GRPO math: group-relative advantages, per-token log-probs, the clipped loss and its aggregation.

Each variant is a small named function picked by config from a dict (``ADVANTAGE_SCALING``,
``LOSS_AGGREGATION``), following TRL's ``GRPOTrainer`` (trl/trainer/grpo_trainer.py) so numbers are
comparable. Where this deviates from the GRPO paper (Shao et al. 2024, arXiv:2402.03300):
  - the KL term uses the k3 estimator against the *base model with the adapter disabled* (no second
    model), and is skipped entirely when ``beta == 0`` (TRL's default since DAPO / Dr. GRPO);
  - clipping is asymmetric (``epsilon_low`` / ``epsilon_high``, DAPO's clip-higher, arXiv:2503.14476);
  - aggregation defaults to DAPO's token-level mean; ``grpo`` is the paper's per-sequence mean and
    ``dr_grpo`` divides by a constant (Liu et al. 2025, arXiv:2503.20783).
Shapes: B = prompts * group_size completions, L = completion length (padded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EPS = 1e-4  # TRL's epsilon in the advantage denominator


# --- step 4: advantages --------------------------------------------------------------------------


def nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std over ``dim`` of the values of ``x`` that are not NaN; 0 where fewer than two are.

    A NaN is set to the mean of the others, which leaves their sum of squares as it is, and Bessel's
    correction is redone for their count: without NaNs this is ``x.std(dim)`` bit for bit.

    >>> nanstd(torch.tensor([[1.0, float("nan"), 3.0], [2.0, float("nan"), float("nan")]]), dim=1)
    tensor([1.4142, 0.0000])
    """
    kept = ~x.isnan()
    n = kept.sum(dim, keepdim=True)
    filled = torch.where(kept, x, x.nanmean(dim, keepdim=True))
    bessel = ((x.size(dim) - 1) / (n - 1)).sqrt()  # exactly 1 without NaNs
    return torch.where(n > 1, filled.std(dim, keepdim=True) * bessel, 0.0).squeeze(dim)


def _std_group(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Std of each prompt's own group (the GRPO paper)."""
    return nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)


def _std_batch(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """One std over the whole batch (more robust for low-variance groups; TRL scale_rewards='batch')."""
    return nanstd(rewards.view(1, -1), dim=1).expand_as(rewards)


def _std_none(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """No scaling: Dr. GRPO removes the std division (it biases toward easy/hard prompts)."""
    return torch.ones_like(rewards)


ADVANTAGE_SCALING: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "group": _std_group,
    "batch": _std_batch,
    "none": _std_none,
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str) -> torch.Tensor:
    """``A_i = (r_i - mean(r_group)) / (std + eps)``; ``rewards`` is [B] ordered prompt-major. Returns [B].

    A NaN reward marks an unscorable completion (every reward function returned None): as in TRL, it is
    left out of its group's mean and of the std, and its advantage is 0. A group's one scorable row is
    its mean: its advantage is 0 too (TRL's NaN std zeroes it; ``nanstd`` of one value is 0 here).
    """
    mean = rewards.view(-1, group_size).nanmean(dim=1).repeat_interleave(group_size)  # [B]
    centred = rewards - mean
    if scale_rewards != "none":
        centred = centred / (ADVANTAGE_SCALING[scale_rewards](rewards, group_size) + EPS)
    return centred.masked_fill(rewards.isnan(), 0.0)


# --- step 5: per-token log-probs and the loss ----------------------------------------------------


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    share_prompt: bool = True,
) -> torch.Tensor:
    """Log-probs of the completion tokens. ``input_ids`` is [B, P+L] (prompts left-padded to P).

    Positions come from the attention mask, as in ``generate``, so left padding does not shift them.
    With ``share_prompt``, rows with the same prompt (a GRPO group's ``group_size`` samples) share one
    forward pass of it: its KV cache is computed once and gathered to each row, so gradients through
    the prompt add up exactly as in a full forward of every row (3.4x faster on the CPU; on a GPU the
    extra forward's launches can cost more than the FLOPs saved: see ``training.share_prompts``).
    Returns [B, L].
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P+L]
    logits = _shared_prompt_logits(model, input_ids, attention_mask, position_ids, prompt_len) if share_prompt else None
    if logits is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[:, prompt_len - 1 : -1, :]  # [B, L, V]: logits that predict each completion token
    targets = input_ids[:, prompt_len:]  # [B, L]
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _shared_prompt_logits(model, input_ids, attention_mask, position_ids, prompt_len: int) -> torch.Tensor | None:
    """[B, L, V] logits of the completion positions with each distinct prompt computed once; None when
    no two rows share a prompt."""
    if prompt_len < 2:
        return None
    first, rows = distinct_rows(input_ids[:, :prompt_len])  # [U], [B]
    if len(first) == len(rows):
        return None
    head = prompt_len - 1  # each distinct prompt but its last token: [U, P-1]
    cache = model(
        input_ids=input_ids[first, :head],
        attention_mask=attention_mask[first, :head],
        position_ids=position_ids[first, :head],
        use_cache=True,
    ).past_key_values
    cache.batch_select_indices(rows)  # [U, ...] -> [B, ...]
    return model(
        input_ids=input_ids[:, head:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, head:],
        past_key_values=cache,
        use_cache=True,
    ).logits[:, :-1, :]  # [B, L, V]


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The index of the first occurrence of each distinct row of ``x`` [B, P], and each row's distinct index.

    >>> first, rows = distinct_rows(torch.tensor([[1, 2], [1, 2], [3, 4], [1, 2]]))
    >>> first.tolist(), rows.tolist()
    ([0, 2], [0, 0, 1, 0])
    """
    seen: dict[tuple, int] = {}
    rows = [seen.setdefault(tuple(r), len(seen)) for r in x.tolist()]
    first = [0] * len(seen)
    for i, r in reversed(list(enumerate(rows))):
        first[r] = i
    return torch.tensor(first, device=x.device), torch.tensor(rows, device=x.device)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0). [B, L]."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-style clipped surrogate per token: ``-min(r * A, clip(r, 1-el, 1+eh) * A)``.

    Returns the loss [B, L] and a 0/1 tensor [B, L] of tokens where the clip was active.
    """
    ratio = torch.exp(logp - old_logp)  # [B, L]
    adv = advantages.unsqueeze(1)  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    return -torch.min(unclipped, clipped), (clipped < unclipped).float()


def _agg_grpo(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (the GRPO paper)."""
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _agg_dr_grpo(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Sum over all tokens / (B * max_completion_length): no length bias (Dr. GRPO)."""
    return (loss * mask).sum() / (loss.size(0) * max_len)


def _agg_dapo(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Token-level mean over the whole batch (DAPO)."""
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


LOSS_AGGREGATION: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "grpo": _agg_grpo,
    "dr_grpo": _agg_dr_grpo,
    "dapo": _agg_dapo,
}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def aggregation_weights(loss_type: str, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """``W`` [B, L] with ``LOSS_AGGREGATION[loss_type](loss, mask, max_len) == (loss * W).sum()``.

    Every aggregation is linear in the per-token loss, so its gradient is that weight; with it,
    micro-batches (gradient accumulation) add up to exactly the full batch's loss.
    """
    probe = torch.ones_like(mask, dtype=torch.float32, requires_grad=True)
    with torch.enable_grad():
        LOSS_AGGREGATION[loss_type](probe, mask.float(), max_len).backward()
    assert probe.grad is not None  # backward() just filled it
    return probe.grad.to(mask.dtype)
