"""Many LoRA adapters on one frozen base: each row of a batch goes through its own slot's low-rank path.

``MultiLoRALinear`` replaces a targeted ``nn.Linear``: the base projection runs once for every row,
then each slot present in the batch adds ``x @ A^T @ B^T * alpha / r`` on its own rows only (a slice
when its rows are contiguous, an index otherwise; rows routed to -1 get the base alone, which is the
KL reference). Which rows belong to which slot is a ``Routing`` object owned by one
``MultiLoRAModel`` and read by its layers: set it with ``with model.route(rows): model(...)``.

Reference designs: prime-rl's ``MultiLoRALinear`` (per-adapter row segments; here the offsets live in
the model's routing object, not a module global), SkyRL tx's LoRA layer. Adjacent slots with as many
rows each and one rank (the usual fused micro-batch: whole groups of one size) share one ``torch.bmm``
pair over their stacked A and B; any other slot gets its own two GEMMs. Not ``torch._grouped_mm``: it
takes bf16 only, and the LoRA path is float32 as in PEFT.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.trainer.slots import LoraSpec, Slot, SlotHParams, new_slot

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Rows = slice | torch.Tensor  # the rows of one slot: a contiguous slice, or an index tensor


@dataclass
class Routing:
    """Per-row slots of the forward in flight; one per ``MultiLoRAModel``, shared by its layers."""

    batch: int | None = None
    """Rows the forward must have (a check); None: no routing set, every row is the base."""
    segments: list[tuple[int, Rows]] = field(default_factory=list)
    """``(slot id, its rows)`` for every slot present."""


def row_segments(rows: torch.Tensor, device: torch.device | str | None = None) -> list[tuple[int, Rows]]:
    """``(slot id, rows)`` for each slot id >= 0 in ``rows`` [B], in order of first appearance: a slice
    where that slot's rows are contiguous (no gather), else an index tensor (on ``device``).

    >>> row_segments(torch.tensor([0, 0, -1, 2, 2]))
    [(0, slice(0, 2, None)), (2, slice(3, 5, None))]
    >>> row_segments(torch.tensor([1, 0, 1]))
    [(1, tensor([0, 2])), (0, slice(1, 2, None))]
    """
    where: dict[int, list[int]] = {}
    for i, sid in enumerate(rows.tolist()):
        if sid >= 0:
            where.setdefault(sid, []).append(i)
    return [
        (sid, slice(idx[0], idx[-1] + 1) if idx[-1] - idx[0] + 1 == len(idx) else torch.tensor(idx, device=device))
        for sid, idx in where.items()
    ]


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus per-slot ``lora_A[sid]`` [r, in] and ``lora_B[sid]`` [out, r] (float32
    weights; computed in float32 on a float32 base, in the base's dtype on a bf16/fp16 base)."""

    def __init__(self, base_layer: nn.Linear, routing: Routing):
        super().__init__()
        self.base_layer = base_layer
        self.routing = routing  # a plain attribute: the model's routing object, not a submodule
        self.lora_A = nn.ParameterDict()  # str(sid) -> [r, in]
        self.lora_B = nn.ParameterDict()  # str(sid) -> [out, r]
        self.scaling: dict[int, float] = {}

    def add(self, sid: int, a: nn.Parameter, b: nn.Parameter, scale: float) -> None:
        self.lora_A[str(sid)], self.lora_B[str(sid)], self.scaling[sid] = a, b, scale

    def remove(self, sid: int) -> None:
        del self.lora_A[str(sid)], self.lora_B[str(sid)], self.scaling[sid]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, in] -> [B, T, out]
        y = self.base_layer(x)  # the base once, for every row
        r = self.routing
        if r.batch is None:
            return y
        if x.size(0) != r.batch:
            raise RuntimeError(f"routing is set for {r.batch} rows, the forward has {x.size(0)}")
        # float32 weights; on a 16-bit base the low-rank path computes in the base's dtype, as PEFT LoRA
        # under the autocast of a bf16 Trainer (TRL's bf16=True), so no float32 copy of x is kept
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
        deltas: list[tuple[int, int, torch.Tensor]] = []  # (lo, hi, delta of rows lo:hi) of slice runs
        for run in runs(r.segments, self.lora_A):
            if len(run) == 1:  # one slot's rows (a slice or an index): two small GEMMs
                sid, rows = run[0]
                a, b = self.lora_A[str(sid)].to(dtype), self.lora_B[str(sid)].to(dtype)
                delta = F.linear(F.linear(x[rows].to(dtype), a), b) * self.scaling[sid]  # [b, T, out]
                if isinstance(rows, slice):
                    deltas.append((rows.start, rows.stop, delta))
                else:  # (delta is in y's dtype: both are x's)
                    y = y.index_add(0, rows, delta)
                continue
            # k adjacent slots with as many rows each and one rank: one batched GEMM pair for all k
            first = run[0][1]
            assert isinstance(first, slice)  # a run of several slots is of slices only (``runs``)
            k, n, lo = len(run), first.stop - first.start, first.start
            a = torch.stack([self.lora_A[str(sid)] for sid, _ in run]).to(dtype)  # [k, r, in]
            b = torch.stack([self.lora_B[str(sid)] for sid, _ in run]).to(dtype)  # [k, out, r]
            xs = x[lo : lo + k * n].to(dtype).reshape(k, -1, x.size(-1))  # [k, n*T, in]
            scales = [self.scaling[sid] for sid, _ in run]
            scale = (
                scales[0]
                if len(set(scales)) == 1
                else torch.tensor(scales, dtype=dtype, device=a.device)[:, None, None]
            )
            delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2)) * scale
            deltas.append((lo, lo + k * n, delta.reshape(k * n, *y.shape[1:])))  # [k*n, T, out]
        if not deltas:
            return y
        deltas.sort(key=lambda d: d[0])
        if deltas[0][0] == 0 and deltas[-1][1] == y.size(0) and all(p[1] == q[0] for p, q in zip(deltas, deltas[1:])):
            # the slots' rows cover the batch (a training micro-batch): one add, no slice assignment
            full = deltas[0][2] if len(deltas) == 1 else torch.cat([d for _, _, d in deltas])
            return (y + full).to(y.dtype)
        for lo, hi, delta in deltas:
            y[lo:hi] = (y[lo:hi] + delta).to(y.dtype)
        return y


def runs(
    segments: list[tuple[int, Rows]], lora_A: Mapping[str, torch.Tensor] | nn.ParameterDict
) -> list[list[tuple[int, Rows]]]:
    """The segments of the slots that target a layer (``lora_A``: its slots' A by str(sid)), cut into runs
    one batched GEMM can take: adjacent contiguous slices of one length and one rank (a run of one
    otherwise).

    >>> A = {"0": torch.zeros(4, 2), "1": torch.zeros(4, 2), "2": torch.zeros(8, 2)}
    >>> [[sid for sid, _ in run] for run in runs([(0, slice(0, 2)), (1, slice(2, 4)), (2, slice(4, 6))], A)]
    [[0, 1], [2]]
    """
    out: list[list[tuple[int, Rows]]] = []
    for sid, rows in segments:
        if str(sid) not in lora_A:  # this slot does not target this layer
            continue
        last = out[-1][-1] if out else None
        if (
            last is not None
            and isinstance(rows, slice)
            and isinstance(last[1], slice)
            and rows.start == last[1].stop
            and rows.stop - rows.start == last[1].stop - last[1].start
            and lora_A[str(sid)].shape == lora_A[str(last[0])].shape
        ):
            out[-1].append((sid, rows))
        else:
            out.append([(sid, rows)])
    return out


def peft_targets(module_names: list[str], all_linear: set[str], cfg: Any, model_type: str | None = None) -> list[str]:
    """The module names (in ``module_names`` order) that PEFT's ``get_peft_model`` targets for the
    ``peft.LoraConfig`` ``cfg``, by PEFT's own matching (``check_target_module_exists``: suffixes,
    regexes, ``exclude_modules``, ``layers_to_transform``). ``all_linear`` is what PEFT expands
    ``"all-linear"`` to on this model (``_maybe_include_all_linear_layers``, LM head excluded)."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    cfg = copy.deepcopy(cfg)
    if cfg.target_modules is None:  # PEFT's per-architecture default
        # (a None model type raises KeyError, as one PEFT has no default for does)
        cfg.target_modules = set(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])  # type: ignore[index]
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear":
        cfg.target_modules = set(all_linear)
    return [n for n in module_names if n and check_target_module_exists(cfg, n)]  # an excluded module is falsy


class MultiLoRAModel(nn.Module):
    """One frozen base causal LM and any number of slots; ``model(**kwargs)`` is the base's forward.

    Outside ``route`` every row is the base. Slots are added where PEFT would put them; the base's
    parameters are never copied, whatever the number of slots. The base stays in eval mode (the
    fused trainer implements no dropout).
    """

    def __init__(self, base: PreTrainedModel):
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

        super().__init__()
        base.eval()
        base.requires_grad_(False)
        self.base = base
        self.routing = Routing()
        self.slots: dict[str, Slot] = {}
        self._layers: dict[str, MultiLoRALinear] = {}  # module name -> installed layer
        self._names = [n for n, _ in base.named_modules()]  # before any install: the names PEFT matches
        probe = LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM")
        expanded = _maybe_include_all_linear_layers(probe, base)  # the LoraConfig it got, target_modules a set now
        self._all_linear = set(expanded.target_modules)  # type: ignore[attr-defined]  # (typed as a PeftConfig)
        self._next_sid = 0

    def forward(self, **kwargs: Any) -> Any:
        return self.base(**kwargs)

    def enable_checkpointing(self) -> None:
        """Activation checkpointing of every decoder layer (transformers' own, non-reentrant): a layer
        keeps only its input and is recomputed in the backward, so one pass holds many more rows.
        Only the layers' own ``training`` flag is set (transformers checkpoints in training mode); their
        submodules stay in eval mode, so dropout stays off. The backward must run under the same
        ``route`` as the forward (``fused_grpo_step`` does)."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        layers = [m for m in self.base.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ValueError(f"{type(self.base).__name__} has no checkpointable decoder layers")
        for m in layers:
            m.training = True

    @property
    def device(self) -> torch.device:
        """Where the base lives (and the slots, and the batches the fused step builds)."""
        return next(self.base.parameters()).device

    def train(self, mode: bool = True) -> MultiLoRAModel:
        """No-op: the base stays in eval mode (dropout would make fused and separate runs differ)."""
        return self

    @contextmanager
    def route(self, rows: torch.Tensor) -> Iterator[None]:
        """Run the forwards inside with row ``i`` through slot id ``rows[i]`` (-1: the base) [B]."""
        known = {s.sid for s in self.slots.values()}
        unknown = set(rows.tolist()) - known - {-1}
        if unknown:
            raise KeyError(f"no slot with id {sorted(unknown)}")
        self.routing.batch, self.routing.segments = int(rows.numel()), row_segments(rows, self.device)
        try:
            yield
        finally:
            self.routing.batch, self.routing.segments = None, []

    def targets(self, spec: LoraSpec) -> list[str]:
        """Module names a slot of this ``spec`` targets: exactly PEFT's for the same ``LoraConfig``."""
        names = peft_targets(
            self._names,
            self._all_linear,
            spec.peft_config(),
            getattr(getattr(self.base, "config", None), "model_type", None),
        )
        for n in names:
            if not isinstance(self._linear(n), nn.Linear):
                raise ValueError(f"target {n!r} is a {type(self._linear(n)).__name__}; only nn.Linear is supported")
        if not names:
            raise ValueError(f"target_modules {spec.target_modules!r} match no module of the base model")
        return names

    def add_slot(
        self, name: str, lora: LoraSpec | Mapping[str, Any], seed: int, hparams: SlotHParams | Mapping[str, Any]
    ) -> Slot:
        """A new slot initialised as ``torch.manual_seed(seed); get_peft_model(base, cfg)`` (B = 0:
        version 0 is the base), with its own AdamW. ``lora``: r, alpha, dropout (0), target_modules."""
        if name in self.slots:
            raise ValueError(f"slot {name!r} exists")
        spec = lora if isinstance(lora, LoraSpec) else LoraSpec(**lora)
        hp = hparams if isinstance(hparams, SlotHParams) else SlotHParams(**hparams)
        if spec.dropout:
            raise ValueError("LoRA dropout is not implemented by the fused trainer: set lora.dropout to 0")
        modules = self.targets(spec)
        shapes = [(n, self._target(n).in_features, self._target(n).out_features) for n in modules]
        slot = new_slot(name, self._next_sid, spec, shapes, seed, hp, self._target(modules[0]).weight.device)
        self._next_sid += 1
        for n, a, b in zip(modules, slot.lora_A, slot.lora_B):
            self._install(n).add(slot.sid, a, b, slot.scale)
        self.slots[name] = slot
        return slot

    def remove_slot(self, name: str) -> None:
        """Drop a slot; a layer left without slots is replaced by its plain base ``nn.Linear`` again."""
        slot = self.slots.pop(name)
        for n in slot.modules:
            layer = self._layers[n]
            layer.remove(slot.sid)
            if not layer.scaling:
                self.base.set_submodule(n, layer.base_layer)
                del self._layers[n]

    def _linear(self, name: str) -> nn.Module:
        """The base module originally at ``name`` (the wrapped ``nn.Linear`` where a layer is installed)."""
        return self._layers[name].base_layer if name in self._layers else self.base.get_submodule(name)

    def _target(self, name: str) -> nn.Linear:
        """``_linear`` of a module ``targets`` returned (it checked that the module is an ``nn.Linear``)."""
        return cast(nn.Linear, self._linear(name))

    def _install(self, name: str) -> MultiLoRALinear:
        if name not in self._layers:
            self._layers[name] = MultiLoRALinear(self._target(name), self.routing)
            self.base.set_submodule(name, self._layers[name])
        return self._layers[name]
