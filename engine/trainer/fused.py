"""Every group's GRPO update in one fused forward/backward: micro-batches mix groups, each row goes
through its own group's slot, and each group's loss is exactly the one it would have alone.

    results = fused_grpo_step(model, [GroupBatch(...), ...], token_budget=4096)

Per step, in order (numbered as the step in ``groups/actor.py``'s docstring):
  5a. no-grad pre-pass: the KL reference log-probs (rows routed to -1, the base) of groups with
      ``beta > 0``, the trainer's old log-probs (rows on their slot) of groups with importance-sampling
      correction, and the IS weights from them;
  5b. pass k = 0 .. max(num_iterations) - 1, over the groups with ``num_iterations > k``: per
      micro-batch, one forward, each group's token losses weighted by ``aggregation_weights`` of its
      *own whole batch* (so micro-batches add up to its full-batch loss), one backward;
  6.  each slot clips its own gradient and takes its own AdamW step.
Micro-batches are packed by a token budget (rows x padded width), whole groups where they fit (groups
of one size and rank then share one batched GEMM per layer), larger groups cut to the budget: a group's rows
``[prompt P_g | completion L_g]`` are placed at column ``P - P_g`` of the micro-batch's
``[P | L]`` (left-padding the prompt, right-padding the completion); positions come from the attention
mask, so the padding changes nothing but float rounding.

Non-finite isolation: a group whose inputs are non-finite (advantages, sampler log-probs where they
enter the loss, its weights) is dropped before anything runs; one whose loss (checked before each
backward) or gradient (before any step) turns out non-finite makes the step restart without it, its
slot and every slot already stepped restored first. Either way the other groups' results are those
of a step without that group, bit for bit, and its own slot is untouched (``skipped`` and ``reason``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.config.schema import GRPOConfig
from engine.trainer.grpo import LOSS_AGGREGATION, aggregation_weights, clipped_token_loss, distinct_rows, k3_kl
from engine.trainer.importance import importance_weights
from engine.trainer.multi_lora import MultiLoRAModel
from engine.trainer.slots import Slot


@dataclass(frozen=True)
class LossSettings:
    """One group's GRPO loss hyper-parameters (the optimizer's are its slot's ``SlotHParams``)."""

    loss_type: str = "dapo"
    """Aggregation: grpo | dr_grpo | dapo (``engine.trainer.grpo.LOSS_AGGREGATION``)."""
    max_len: int = 1
    """dr_grpo's constant denominator per sequence (max_completion_length x max turns)."""
    epsilon_low: float = 0.2
    """Lower clip of the ratio: 1 - epsilon_low."""
    epsilon_high: float = 0.2
    """Upper clip of the ratio: 1 + epsilon_high."""
    beta: float = 0.0
    """k3 KL coefficient against the base; 0 skips the reference forward."""
    temperature: float = 1.0
    """The trainer's logits are divided by it (the sampler's temperature)."""
    num_iterations: int = 1
    """Optimizer steps on this batch; the group takes part in the step's first num_iterations passes."""
    is_correction: bool = False
    """Truncated importance sampling against the sampler (TRL's vllm_importance_sampling_correction)."""
    is_mode: str = "token_truncate"
    """``engine.trainer.importance.IS_MODES``."""
    is_cap: float = 3.0
    """Upper bound of the IS weight."""

    @classmethod
    def from_grpo(cls, hp: GRPOConfig, max_len: int) -> LossSettings:
        """From a group's GRPO settings (``GroupActor.hp``); ``max_len`` as ``GroupActor.prepare`` computes it."""
        return cls(
            loss_type=hp.loss_type,
            max_len=max_len,
            epsilon_low=hp.epsilon_low,
            epsilon_high=hp.epsilon_high,
            beta=hp.beta,
            temperature=hp.temperature,
            num_iterations=hp.num_iterations,
            is_correction=hp.vllm_importance_sampling_correction,
            is_mode=hp.vllm_importance_sampling_mode,
            is_cap=hp.vllm_importance_sampling_cap,
        )


@dataclass
class Packed:
    """One group's episodes as token tensors (``GroupActor._pack``): first prompts left-padded to
    ``prompt_len``, the rest (model turns and observations) right-padded to L."""

    input_ids: torch.Tensor
    """[B, P+L]."""
    attention_mask: torch.Tensor
    """[B, P+L]."""
    prompt_len: int
    """P."""
    mask: torch.Tensor
    """[B, L] float, 1 on the tokens the model sampled."""
    old_logp: torch.Tensor
    """[B, L] the sampler's log-probs of those tokens (0 elsewhere)."""


@dataclass
class GroupBatch:
    """One group's packed batch, as ``GroupActor._pack`` builds it, plus its advantages and loss settings."""

    slot: str
    """Name of the group's slot in the model."""
    input_ids: torch.Tensor
    """[B, P+L]: prompts left-padded to P, completions right-padded to L."""
    attention_mask: torch.Tensor
    """[B, P+L]."""
    prompt_len: int
    """P."""
    mask: torch.Tensor
    """[B, L] float, 1 on the tokens the loss covers (the model's own tokens)."""
    old_logp: torch.Tensor
    """[B, L] the sampler's log-probs of those tokens."""
    advantages: torch.Tensor
    """[B]."""
    loss: LossSettings

    @classmethod
    def from_pack(cls, slot: str, packed: Packed, advantages: torch.Tensor, loss: LossSettings) -> GroupBatch:
        """From a group's ``Packed`` episodes, its advantages and its loss settings."""
        p = packed
        return cls(slot, p.input_ids, p.attention_mask, p.prompt_len, p.mask, p.old_logp, advantages, loss)


@dataclass
class GroupResult:
    """What one group's update did (the trainer's part of its metrics row, ``GroupActor.finish``)."""

    slot: str
    skipped: bool = False
    """True: the slot was left untouched (weights and optimizer state); write an ``events`` row."""
    reason: str = ""
    """Why it was skipped."""
    loss: float = math.nan
    """Loss of the group's last pass (sum over its micro-batches)."""
    kl: float = math.nan
    """Masked mean of the k3 KL of the last pass (0 when beta == 0)."""
    clip_ratio: float = math.nan
    """Fraction of loss tokens where the clip was active, last pass."""
    grad_norm: float = math.nan
    """The slot's gradient norm before clipping, last pass."""
    is_weight_mean: float = math.nan
    """Masked mean of the IS weights (NaN without IS correction)."""
    lr: float = math.nan
    logp: torch.Tensor | None = None
    """[B, L] the trainer's log-probs of the last pass, detached (for logprob_mismatch)."""


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of group ``group``'s batch, routed through slot id ``route`` (-1: the base)."""

    group: int
    lo: int
    hi: int
    route: int


class NonFinite(Exception):
    """Groups (index -> reason) whose loss or gradient is non-finite: the step restarts without them."""

    def __init__(self, bad: dict[int, str]):
        super().__init__(bad)
        self.bad = bad


# --- micro-batches -------------------------------------------------------------------------------


def plan_micro_batches(jobs: list[tuple[int, int, int, int, int]], token_budget: int | None) -> list[list[Piece]]:
    """Packing of ``jobs`` = ``[(group, rows, P_g, L_g, route)]``, in order, into micro-batches of at most
    ``token_budget`` = rows x (max P + max L) tokens. A group goes whole into the current micro-batch
    if it fits, else starts the next one (so groups of one size line up for one batched GEMM); a group
    larger than the budget is cut into budget-sized pieces; one row over the budget goes alone.
    ``None``: one micro-batch.

    >>> [[(p.group, p.lo, p.hi) for p in mb] for mb in plan_micro_batches([(0, 3, 2, 2, 0), (1, 2, 4, 4, 1)], 32)]
    [[(0, 0, 3)], [(1, 0, 2)]]
    >>> [[(p.group, p.lo, p.hi) for p in mb] for mb in plan_micro_batches([(0, 2, 2, 2, 0), (1, 2, 2, 2, 1)], 16)]
    [[(0, 0, 2), (1, 0, 2)]]
    >>> [[(p.group, p.lo, p.hi) for p in mb] for mb in plan_micro_batches([(0, 5, 2, 2, 0)], 8)]
    [[(0, 0, 2)], [(0, 2, 4)], [(0, 4, 5)]]
    """
    out: list[list[Piece]] = []
    cur: list[Piece] = []
    n = P = L = 0
    for g, rows, pg, lg, route in jobs:
        lo = 0
        while lo < rows:
            width = max(P, pg) + max(L, lg)
            room = rows - lo if token_budget is None else token_budget // width - n
            if n > 0 and room < rows - lo:  # the rest of this group does not fit: close this micro-batch
                out.append(cur)
                cur, n, P, L = [], 0, 0, 0
                continue
            take = max(1, min(rows - lo, room))
            cur.append(Piece(g, lo, lo + take, route))
            n, P, L, lo = n + take, max(P, pg), max(L, lg), lo + take
    return out + ([cur] if cur else [])


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [b, P+L]
    attention_mask: torch.Tensor  # [b, P+L]
    P: int
    routes: torch.Tensor  # [b] slot id per row
    temperature: torch.Tensor  # [b]
    spans: list[tuple[Piece, int, int]]  # piece and its rows [start, end) in this micro-batch


def assemble(batches: list[GroupBatch], pieces: list[Piece], device: torch.device) -> MicroBatch:
    """The pieces' rows re-padded to the micro-batch's max prompt P and max completion L."""
    P = max(batches[p.group].prompt_len for p in pieces)
    L = max(batches[p.group].mask.size(1) for p in pieces)
    rows = sum(p.hi - p.lo for p in pieces)
    ids = torch.zeros(rows, P + L, dtype=torch.long, device=device)  # padding: masked, its value unused
    attn = torch.zeros(rows, P + L, dtype=batches[pieces[0].group].attention_mask.dtype, device=device)
    routes, temps, spans, start = [], [], [], 0
    for p in pieces:
        b, end = batches[p.group], start + p.hi - p.lo
        col = P - b.prompt_len  # the group's [P_g | L_g] starts here
        ids[start:end, col : col + b.input_ids.size(1)] = b.input_ids[p.lo : p.hi]
        attn[start:end, col : col + b.input_ids.size(1)] = b.attention_mask[p.lo : p.hi]
        routes += [p.route] * (end - start)
        temps += [b.loss.temperature] * (end - start)
        spans.append((p, start, end))
        start = end
    return MicroBatch(ids, attn, P, torch.tensor(routes), torch.tensor(temps, device=device), spans)


def routed_logprobs(model: MultiLoRAModel, mb: MicroBatch, share_prompt: bool) -> torch.Tensor:
    """[b, L] log-probs of the completion tokens, each row through its own slot at its own temperature.

    ``engine.trainer.grpo.completion_logprobs`` with routing: with ``share_prompt``, rows with the same
    (slot, prompt) share one forward of the prompt head (rows of different slots never do: their
    KV caches differ), the head forward routed by the distinct rows' slots. The LM head runs on the
    completion positions only (``logits_to_keep``).
    """
    ids, attn, P = mb.input_ids, mb.attention_mask, mb.P
    L = ids.size(1) - P
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # [b, P+L]
    logits = None
    if share_prompt and P >= 2:
        key = torch.cat([mb.routes.to(ids.device)[:, None], ids[:, :P], attn[:, :P].long()], dim=1)  # [b, 1+2P]
        first, rows = distinct_rows(key)  # [U], [b]
        if len(first) < len(rows):
            head = P - 1  # each distinct prompt but its last token
            with model.route(mb.routes[first.cpu()]):
                cache = model(
                    input_ids=ids[first, :head],
                    attention_mask=attn[first, :head],
                    position_ids=position_ids[first, :head],
                    use_cache=True,
                    logits_to_keep=1,
                ).past_key_values
            cache.batch_select_indices(rows)  # [U, ...] -> [b, ...]
            with model.route(mb.routes):
                logits = model(
                    input_ids=ids[:, head:],
                    attention_mask=attn,
                    position_ids=position_ids[:, head:],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=L + 1,
                ).logits[:, :-1, :]  # [b, L, V]
    if logits is None:
        with model.route(mb.routes):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, logits_to_keep=L + 1).logits[
                :, :-1, :
            ]  # [b, L, V]
    logp = torch.log_softmax(logits.float() / mb.temperature[:, None, None], dim=-1)  # [b, L, V]
    return logp.gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)  # [b, L]


def _passes(model, batches, jobs, token_budget, share_prompt) -> Iterator[tuple[MicroBatch, torch.Tensor]]:
    """``(micro-batch, its [b, L] log-probs)`` for the rows of ``jobs`` = ``[(group, route)]``."""
    device = model.device
    plan = plan_micro_batches(
        [(g, batches[g].mask.size(0), batches[g].prompt_len, batches[g].mask.size(1), route) for g, route in jobs],
        token_budget,
    )
    for pieces in plan:
        mb = assemble(batches, pieces, device)
        yield mb, routed_logprobs(model, mb, share_prompt)


# --- the step ------------------------------------------------------------------------------------


def fused_grpo_step(
    model: MultiLoRAModel, batches: list[GroupBatch], token_budget: int | None = None, share_prompt: bool = True
) -> list[GroupResult]:
    """One GRPO update of every group's slot; returns one ``GroupResult`` per batch, in order.

    ``token_budget``: max rows x padded width per micro-batch (None: all rows at once).
    ``share_prompt``: one forward of each distinct (slot, prompt) head (``completion_logprobs``'s option).
    """
    slots = [model.slots[b.slot] for b in batches]
    if len({s.sid for s in slots}) < len(slots):
        raise ValueError("two batches for one slot")
    skipped = {g: r for g, b in enumerate(batches) if (r := _input_fault(b))}  # on the host, before any copy
    batches = [_on(b, model.device) for b in batches]
    ready = [g for g in range(len(batches)) if g not in skipped]
    skipped.update(
        {
            g: "non-finite adapter weights"
            for g, ok in zip(ready, finite_each([slots[g].params for g in ready]))
            if not ok
        }
    )
    while True:
        live = [g for g in range(len(batches)) if g not in skipped]
        try:
            done = _step(model, batches, slots, live, token_budget, share_prompt)
            break
        except NonFinite as e:
            skipped.update(e.bad)
    return [
        GroupResult(b.slot, skipped=True, reason=skipped[g], lr=slots[g].hparams.lr) if g in skipped else done[g]
        for g, b in enumerate(batches)
    ]


@dataclass
class _Targets:
    """What one group's token losses are computed against, fixed for the whole step."""

    old: torch.Tensor | None  # [B, L] the ratio's denominator: sampler log-probs, or the trainer's own with IS
    # correction (None: the trainer's own of this very pass, detached: one pass, so the policy is the old one)
    is_weights: torch.Tensor | None  # [B, L] or [B, 1]; None with ``old`` None: computed in the pass
    ref: torch.Tensor | None  # [B, L] the base's log-probs (beta > 0)
    weights: torch.Tensor  # [B, L] aggregation weights: the group's loss = sum(token_loss * weights)


@dataclass
class _PassLog:
    """One group's numbers of its latest pass."""

    logp: torch.Tensor  # [B, L]
    clipped: torch.Tensor  # [B, L]
    kl: torch.Tensor  # [B, L]
    loss: torch.Tensor  # []
    is_weights: torch.Tensor | None = None  # [B, L] when computed in the pass
    grad_norm: float = math.nan


def _targets(model, batches, slots, live, token_budget, share_prompt) -> dict[int, _Targets]:
    """5a. One no-grad pass over the rows that need it: the base's log-probs (rows routed to -1) of groups
    with ``beta > 0``, the trainer's old log-probs (rows on their slot) of groups with IS correction and
    ``num_iterations > 1``. With one iteration the old policy is the one of the training pass itself,
    so its log-probs (detached) are the old ones: no extra forward (TRL's own shortcut)."""
    jobs = [(g, -1) for g in live if batches[g].loss.beta > 0] + [
        (g, slots[g].sid) for g in live if batches[g].loss.is_correction and batches[g].loss.num_iterations > 1
    ]
    pre = {(g, route): torch.empty_like(batches[g].old_logp) for g, route in jobs}  # [B_g, L_g] each
    with torch.no_grad():
        for mb, logp in _passes(model, batches, jobs, token_budget, share_prompt):
            for p, s, e in mb.spans:
                pre[p.group, p.route][p.lo : p.hi] = logp[s:e, : batches[p.group].mask.size(1)]
    out = {}
    for g in live:
        b = batches[g]
        old = pre.get((g, slots[g].sid)) if b.loss.is_correction else b.old_logp  # [B, L] or None
        is_w = (
            importance_weights(old, b.old_logp, b.mask, b.loss.is_mode, b.loss.is_cap)
            if b.loss.is_correction and old is not None
            else None
        )
        out[g] = _Targets(old, is_w, pre.get((g, -1)), aggregation_weights(b.loss.loss_type, b.mask, b.loss.max_len))
    return out


def _group_loss(b: GroupBatch, t: _Targets, logp: torch.Tensor, rows: slice, log: _PassLog) -> torch.Tensor:
    """The weighted sum of one group's token losses on its ``rows``, as a group training alone computes it;
    ``logp`` [n, L] are those rows' log-probs in the micro-batch (L >= the group's L_g)."""
    logp = logp[:, : b.mask.size(1)]  # [n, L_g]
    old = t.old[rows] if t.old is not None else logp.detach()
    tok, clipped = clipped_token_loss(logp, old, b.advantages[rows], b.loss.epsilon_low, b.loss.epsilon_high)
    if b.loss.is_correction:
        is_w = (
            t.is_weights[rows]
            if t.is_weights is not None
            else importance_weights(old, b.old_logp[rows], b.mask[rows], b.loss.is_mode, b.loss.is_cap)
        )
        tok = tok * is_w
        if t.is_weights is None:
            if log.is_weights is None:
                log.is_weights = torch.empty_like(b.mask)
            log.is_weights[rows] = is_w.expand_as(tok)
    kl = k3_kl(logp, t.ref[rows]) if t.ref is not None else torch.zeros_like(logp)
    log.logp[rows], log.clipped[rows], log.kl[rows] = logp.detach(), clipped, kl.detach()
    return ((tok + b.loss.beta * kl) * t.weights[rows]).sum()


def _step(model, batches, slots, live, token_budget, share_prompt) -> dict[int, GroupResult]:
    """The step over the ``live`` groups; raises ``NonFinite`` with every slot as it was on entry.

    The device is synchronised once per pass (every group's loss and gradient norm checked together)
    and once at the end (every stepped slot's new weights), not per micro-batch or per group."""
    targets = _targets(model, batches, slots, live, token_budget, share_prompt)
    snapshot = {g: _Snapshot.take(slots[g]) for g in live}  # undone on any failure: the slot stays as it was
    logs: dict[int, _PassLog] = {}
    try:
        for k in range(max((batches[g].loss.num_iterations for g in live), default=0)):
            active = [g for g in live if batches[g].loss.num_iterations > k]
            for g in active:
                slots[g].optimizer.zero_grad(set_to_none=True)
                b = batches[g]
                logs[g] = _PassLog(
                    torch.empty_like(b.old_logp),
                    torch.empty_like(b.mask),
                    torch.empty_like(b.mask),
                    torch.zeros((), device=b.mask.device),
                )
            # 5b. per micro-batch: one forward, each group's weighted token losses, one backward of their sum;
            # rows never mix, so a non-finite loss only reaches its own slot's gradient (checked below)
            for mb, logp in _passes(model, batches, [(g, slots[g].sid) for g in active], token_budget, share_prompt):
                parts = [
                    _group_loss(batches[p.group], targets[p.group], logp[s:e], slice(p.lo, p.hi), logs[p.group])
                    for p, s, e in mb.spans
                ]
                for (p, _, _), x in zip(mb.spans, parts):
                    logs[p.group].loss = logs[p.group].loss + x.detach()
                with model.route(mb.routes):  # the same routing for recomputed layers (activation checkpointing)
                    torch.stack(parts).sum().backward()
            # 6. each slot: its own clip, then (its loss and gradient finite) its own step
            norms = [torch.nn.utils.clip_grad_norm_(slots[g].params, slots[g].hparams.max_grad_norm) for g in active]
            checks = torch.stack([logs[g].loss for g in active] + norms).tolist()  # one sync per pass
            losses, norm_values = checks[: len(active)], checks[len(active) :]
            bad = {g: f"non-finite loss (pass {k})" for g, x in zip(active, losses) if not math.isfinite(x)}
            bad.update(
                {
                    g: f"non-finite gradient norm {n} (pass {k})"
                    for g, n in zip(active, norm_values)
                    if not math.isfinite(n) and g not in bad
                }
            )
            if bad:
                raise NonFinite(bad)
            for g, n in zip(active, norm_values):
                slots[g].optimizer.step()
                logs[g].grad_norm = n
        bad = {
            g: "non-finite weights after the optimizer step"
            for g, ok in zip(live, finite_each([slots[g].params for g in live]))
            if not ok
        }
        if bad:  # a finite step to non-finite weights (e.g. a huge lr)
            raise NonFinite(bad)
    except NonFinite:
        for g in live:
            snapshot[g].restore(slots[g])
            slots[g].optimizer.zero_grad(set_to_none=True)
        raise
    return _results(batches, slots, logs, targets, live)


@dataclass
class _Snapshot:
    """A slot's weights and optimizer state as they were (foreach copies: a few kernels per slot)."""

    params: tuple[torch.Tensor, ...]
    had_state: list[bool]  # per parameter: an optimizer state existed (else it is created by the step)
    state: tuple[torch.Tensor, ...]  # copies of the state tensors that existed, in order

    @classmethod
    def take(cls, slot: Slot) -> _Snapshot:
        params = slot.params
        had = [p in slot.optimizer.state for p in params]
        with torch.no_grad():  # x * 1.0 == x bit for bit, inf and nan included
            weights = torch._foreach_mul(params, 1.0)
            state = _state_tensors(slot, params, had)
            copies = torch._foreach_mul(state, 1.0) if state else ()
        return cls(weights, had, copies)

    def restore(self, slot: Slot) -> None:
        params = slot.params
        with torch.no_grad():
            torch._foreach_copy_(params, self.params)
            current = _state_tensors(slot, params, self.had_state)
            if current:  # the optimizer updates its state in place: copy the old values back into it
                torch._foreach_copy_(current, self.state)
        for p, had in zip(params, self.had_state):
            if not had:
                slot.optimizer.state.pop(p, None)  # no step had been taken: lazily created again


def _state_tensors(slot: Slot, params: list[torch.Tensor], had: list[bool]) -> list[torch.Tensor]:
    return [
        v for p, h in zip(params, had) if h for _, v in sorted(slot.optimizer.state[p].items()) if torch.is_tensor(v)
    ]


def finite_each(param_lists: list[list[torch.Tensor]]) -> list[bool]:
    """For each list of tensors: all its values finite; one device sync for all."""
    if not param_lists:
        return []
    with torch.no_grad():
        # x * 0 is 0 where x is finite and nan where not: the norm of it all is 0 or nan
        norms = [
            torch.stack(torch._foreach_norm(torch._foreach_mul(ps, 0.0))).sum() if ps else torch.zeros(())
            for ps in param_lists
        ]
        return [x == 0.0 for x in torch.stack([n.to(norms[0].device) for n in norms]).tolist()]


def _results(batches, slots, logs, targets, live) -> dict[int, GroupResult]:
    """Each live group's numbers of its last pass, moved to the host in one transfer."""
    rows = []
    for g in live:
        b, log = batches[g], logs[g]
        is_w = targets[g].is_weights if targets[g].is_weights is not None else log.is_weights
        n = b.mask.sum().clamp(min=1.0)
        rows.append(
            torch.stack(
                [
                    log.loss.float(),
                    (log.kl * b.mask).sum() / n,
                    (log.clipped * b.mask).sum() / n,
                    (is_w.expand_as(b.mask) * b.mask).sum() / n
                    if is_w is not None
                    else torch.full((), math.nan, device=n.device),
                ]
            )
        )
    values = torch.stack(rows).tolist() if rows else []
    logp = [logs[g].logp.cpu() for g in live]
    return {
        g: GroupResult(
            batches[g].slot,
            loss=loss,
            kl=kl,
            clip_ratio=clip,
            grad_norm=logs[g].grad_norm,
            lr=slots[g].optimizer.param_groups[0]["lr"],
            logp=lp,
            is_weight_mean=isw,
        )
        for g, (loss, kl, clip, isw), lp in zip(live, values, logp)
    }


def _input_fault(b: GroupBatch) -> str:
    """Why a group cannot train, from its batch on the host before anything runs ('' if it can)."""
    B, width = b.input_ids.shape
    L = width - b.prompt_len
    for name, t, shape in (
        ("attention_mask", b.attention_mask, (B, width)),
        ("mask", b.mask, (B, L)),
        ("old_logp", b.old_logp, (B, L)),
        ("advantages", b.advantages, (B,)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"batch of slot {b.slot!r}: {name} has shape {tuple(t.shape)}, expected {shape}")
    if b.loss.num_iterations < 1 or b.loss.loss_type not in LOSS_AGGREGATION:
        raise ValueError(f"batch of slot {b.slot!r}: bad loss settings {b.loss}")
    if not torch.isfinite(b.advantages).all():
        return "non-finite advantages"
    if not b.loss.is_correction and not torch.isfinite(b.old_logp[b.mask.bool()]).all():
        return "non-finite sampler log-probs"  # (with IS correction a NaN means 'not reported': weight 1)
    return ""


def _on(b: GroupBatch, device: torch.device) -> GroupBatch:
    return GroupBatch(
        b.slot,
        b.input_ids.to(device),
        b.attention_mask.to(device),
        b.prompt_len,
        b.mask.to(device).float(),
        b.old_logp.to(device).float(),
        b.advantages.to(device).float(),
        b.loss,
    )
