"""One group's slot in the fused trainer: its LoRA A/B (float32), its own AdamW, its hyper-parameters.

A slot's state dict uses PEFT's key names (``base_model.model.<module>.lora_A.weight``), exactly the
keys and shapes of ``peft.get_peft_model_state_dict(get_peft_model(base, cfg))``, so the rollout
services' ``publish`` takes it unchanged and ``save_slot`` writes a directory that
``PeftModel.from_pretrained`` loads. The optimizer's parameters are ordered as PEFT's
``[p for p in model.parameters() if p.requires_grad]`` (A then B, module by module), so an optimizer
state dict of ``GroupActor`` loads into a slot and back.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config.schema import GRPOConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSpec:
    """Shape of a slot's adapter (the fields of the run config's ``lora:`` section)."""

    r: int
    """LoRA rank."""
    alpha: float
    """LoRA alpha; the low-rank path is scaled by ``alpha / r`` (PEFT's default, no rsLoRA)."""
    dropout: float = 0.0
    """LoRA dropout; the fused trainer implements none, so it must be 0."""
    target_modules: list[str] | str = "all-linear"
    """Modules that get the adapter, matched by PEFT's own rules ('all-linear' excludes the LM head)."""

    def peft_config(self):
        """The ``peft.LoraConfig`` a ``GroupActor`` builds from the same fields."""
        from engine.models.base import peft_lora_config

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return peft_lora_config(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=targets)


@dataclass(frozen=True)
class SlotHParams:
    """A slot's optimizer hyper-parameters (the GRPO loss's own live in ``fused.LossSettings``)."""

    lr: float
    """AdamW learning rate."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip of this slot's own gradient norm."""

    @classmethod
    def from_grpo(cls, hp: GRPOConfig) -> SlotHParams:
        """From a group's GRPO settings (``GroupActor.hp``)."""
        b1, b2 = hp.adam_betas
        return cls(lr=hp.lr, betas=(b1, b2), weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm)


@dataclass(eq=False)
class Slot:
    """One adapter: ``lora_A[i]`` [r, in_i] and ``lora_B[i]`` [out_i, r] of ``modules[i]``, and its optimizer.

    The parameters are the very ``nn.Parameter`` objects installed in the model's ``MultiLoRALinear``
    layers; ``sid`` is the id rows are routed by.
    """

    name: str
    sid: int
    spec: LoraSpec
    modules: list[str]
    lora_A: list[nn.Parameter]
    lora_B: list[nn.Parameter]
    hparams: SlotHParams
    optimizer: torch.optim.AdamW = field(repr=False)

    @property
    def params(self) -> list[torch.Tensor]:
        """A then B, module by module (PEFT's parameter order): a new list of the ``nn.Parameter`` objects."""
        return [p for pair in zip(self.lora_A, self.lora_B) for p in pair]

    @property
    def scale(self) -> float:
        return self.spec.alpha / self.spec.r


@dataclass
class SlotState:
    """Everything that defines a slot's training from here on (a checkpoint, or a donor for PBT)."""

    adapter: dict[str, torch.Tensor]
    """PEFT-format state dict."""
    optimizer: dict
    """``torch.optim.AdamW.state_dict()``."""
    hparams: SlotHParams


# --- creation ------------------------------------------------------------------------------------


def peft_default_init(shapes: list[tuple[int, int]], r: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's default LoRA init of modules with ``(in_features, out_features)`` ``shapes``: A [r, in]
    ``kaiming_uniform_(a=sqrt(5))``, B [out, r] zeros, so the slot starts as the base.

    Drawn from a ``torch.Generator`` seeded with ``seed`` in the order PEFT draws them from the global
    RNG (``nn.Linear(in, r)``'s init, ``nn.Linear(r, out)``'s init, then PEFT's re-init of A), so a
    slot equals ``torch.manual_seed(seed); get_peft_model(base, cfg)``, what ``GroupActor`` does today.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for fan_in, fan_out in shapes:
        a, b = torch.empty(r, fan_in), torch.empty(fan_out, r)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)  # nn.Linear(in, r).__init__
        nn.init.kaiming_uniform_(b, a=math.sqrt(5), generator=g)  # nn.Linear(r, out).__init__
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)  # LoraLayer.reset_lora_parameters
        out.append((a, b.zero_()))
    return out


def new_slot(
    name: str,
    sid: int,
    spec: LoraSpec,
    shapes: list[tuple[str, int, int]],
    seed: int,
    hparams: SlotHParams,
    device: torch.device | str = "cpu",
) -> Slot:
    """A fresh slot over ``shapes`` = ``[(module, in_features, out_features)]`` (in module order)."""
    init = peft_default_init([(i, o) for _, i, o in shapes], spec.r, seed)
    lora_A = [nn.Parameter(a.to(device)) for a, _ in init]
    lora_B = [nn.Parameter(b.to(device)) for _, b in init]
    params = [p for pair in zip(lora_A, lora_B) for p in pair]
    betas = (*hparams.betas,)  # a tuple even where the hyper-parameters came from a dict holding a list
    optimizer = torch.optim.AdamW(params, lr=hparams.lr, betas=betas, weight_decay=hparams.weight_decay)
    return Slot(name, sid, spec, [m for m, _, _ in shapes], lora_A, lora_B, hparams, optimizer)


def set_hparams(slot: Slot, **changes: Any) -> SlotHParams:
    """Change a slot's hyper-parameters (e.g. PBT's perturbed lr); lr, betas and weight decay go into its
    optimizer's param group. Returns the new hyper-parameters."""
    slot.hparams = replace(slot.hparams, **changes)
    for group in slot.optimizer.param_groups:
        group.update(lr=slot.hparams.lr, betas=tuple(slot.hparams.betas), weight_decay=slot.hparams.weight_decay)
    return slot.hparams


# --- PEFT format ---------------------------------------------------------------------------------


def peft_key(module: str, which: str) -> str:
    """PEFT's state-dict key of a module's ``lora_A``/``lora_B`` weight (adapter name dropped, as PEFT saves)."""
    return f"base_model.model.{module}.{which}.weight"


def state_dict(slot: Slot) -> dict[str, torch.Tensor]:
    """The adapter in PEFT keys, detached copies on the CPU (what ``HFRollout.publish`` takes)."""
    out = {}
    for m, a, b in zip(slot.modules, slot.lora_A, slot.lora_B):
        out[peft_key(m, "lora_A")] = a.detach().to("cpu", copy=True)
        out[peft_key(m, "lora_B")] = b.detach().to("cpu", copy=True)
    return out


def flat_adapter(slot: Slot, dtype: str = "float32") -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """The adapter as ``([(PEFT key, shape)], one flat host tensor)``: every weight in key order, cast to
    ``dtype`` on the slot's device, then one device-to-host copy."""
    return flat_adapters([slot], dtype)[0]


def flat_adapters(
    slots: list[Slot], dtype: str = "float32"
) -> list[tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]]:
    """``flat_adapter`` of each slot, from one cast and one device-to-host copy for all of them (each
    slot's flat tensor a view of that host buffer)."""
    if not slots:
        return []
    named = [_named_params(s) for s in slots]
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for n in named for _, p in n]).to(getattr(torch, dtype)).cpu()
    out, offset = [], 0
    for n in named:
        size = sum(p.numel() for _, p in n)
        out.append(([(k, tuple(p.shape)) for k, p in n], flat[offset : offset + size]))
        offset += size
    return out


def state_dicts(slots: list[Slot], dtype: str = "float32") -> dict[str, dict[str, torch.Tensor]]:
    """``state_dict`` of each slot, cast to ``dtype`` on the slots' device and moved to the host in one
    copy (``flat_adapters``), then one host tensor per key."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for slot, (layout, flat) in zip(slots, flat_adapters(slots, dtype)):
        out[slot.name], offset = {}, 0
        for k, shape in layout:
            n = math.prod(shape)
            out[slot.name][k] = flat[offset : offset + n].view(shape).clone()
            offset += n
    return out


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path: str | Path, layout: list[tuple[str, tuple[int, ...]]], flat: torch.Tensor) -> None:
    """A safetensors file of the tensors ``layout`` names, laid out one after another in ``flat`` (as
    ``flat_adapter`` returns them): the header, then ``flat``'s bytes in one write (no per-tensor copy)."""
    import struct

    size = flat.element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in layout:
        n = math.prod(shape) * size
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[flat.dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    if offset != flat.numel() * size:
        raise ValueError(f"layout covers {offset} bytes, the buffer has {flat.numel() * size}")
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(flat.contiguous().view(torch.uint8).numpy().data)  # the buffer itself, not a copy of it


def load_state_dict(slot: Slot, adapter: Mapping[str, torch.Tensor]) -> None:
    """Copy a PEFT-format state dict into the slot's weights; keys and shapes must match exactly."""
    expected = {
        peft_key(m, w): p
        for m, a, b in zip(slot.modules, slot.lora_A, slot.lora_B)
        for w, p in (("lora_A", a), ("lora_B", b))
    }
    missing, unexpected = sorted(set(expected) - set(adapter)), sorted(set(adapter) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit slot {slot.name!r}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for k, p in expected.items():
            if tuple(adapter[k].shape) != tuple(p.shape):
                raise ValueError(
                    f"slot {slot.name!r}: {k} has shape {tuple(adapter[k].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(adapter[k])


def save_slot(slot: Slot, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in ``path``; loads with
    ``PeftModel.from_pretrained(base, path)``. ``target_modules`` is written as the resolved module
    names, so the directory means the same modules whatever the matching rule was."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = LoraSpec(slot.spec.r, slot.spec.alpha, slot.spec.dropout, list(slot.modules)).peft_config()
    cfg.base_model_name_or_path = base_model_name_or_path
    cfg.save_pretrained(str(out))
    save_file(
        {k: v.contiguous() for k, v in state_dict(slot).items()}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"}
    )
    return out


# --- copies and checkpoints ----------------------------------------------------------------------


def get_state(slot: Slot, device: torch.device | str = "cpu") -> SlotState:
    """A deep copy of the slot's adapter, optimizer state and hyper-parameters, on ``device`` (to the
    host: one flat device-to-host copy per dtype, not one per tensor)."""
    adapter, optimizer = {k: p.detach() for k, p in _named_params(slot)}, slot.optimizer.state_dict()
    if torch.device(device).type == "cpu":
        adapter, optimizer = host_copy((adapter, optimizer))
        return SlotState(adapter=adapter, optimizer=optimizer, hparams=slot.hparams)
    return SlotState(
        adapter={k: v.to(device, copy=True) for k, v in adapter.items()},
        optimizer=_to(copy.deepcopy(optimizer), device),
        hparams=slot.hparams,
    )


def host_copy(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every tensor replaced by a host copy: the tensors of
    each dtype are concatenated on their device and copied to the host at once, then handed out as
    views of that one host buffer (``torch.save`` writes each buffer once)."""
    leaves: list[torch.Tensor] = []

    def collect(o):
        if isinstance(o, torch.Tensor):
            leaves.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                collect(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                collect(v)

    collect(obj)
    copies: dict[int, torch.Tensor] = {}
    by_kind: dict[tuple, list[int]] = {}
    for i, t in enumerate(leaves):
        by_kind.setdefault((t.dtype, t.device), []).append(i)
    with torch.no_grad():
        for idx in by_kind.values():
            flat = torch.cat([leaves[i].detach().reshape(-1) for i in idx]).cpu()  # cat copies: never aliased
            offset = 0
            for i in idx:
                copies[i] = flat[offset : offset + leaves[i].numel()].view(leaves[i].shape)
                offset += leaves[i].numel()
    counter = iter(range(len(leaves)))

    def rebuild(o):
        if isinstance(o, torch.Tensor):
            return copies[next(counter)]
        if isinstance(o, dict):
            return {k: rebuild(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(rebuild(v) for v in o)
        return copy.deepcopy(o)

    return rebuild(obj)


def _named_params(slot: Slot) -> list[tuple[str, nn.Parameter]]:
    """``(PEFT key, parameter)`` in PEFT's order."""
    return [
        (peft_key(m, w), p)
        for m, a, b in zip(slot.modules, slot.lora_A, slot.lora_B)
        for w, p in (("lora_A", a), ("lora_B", b))
    ]


def set_state(slot: Slot, state: SlotState, hparams: bool = True) -> None:
    """Load ``state`` into the slot (weights, optimizer moments; its hyper-parameters unless ``hparams``
    is False, where the slot keeps its own)."""
    load_state_dict(slot, state.adapter)
    slot.optimizer.load_state_dict(copy.deepcopy(state.optimizer))  # load_state_dict may alias tensors
    set_hparams(slot, **asdict(state.hparams if hparams else slot.hparams))


def copy_slot(src: Slot, dst: Slot) -> None:
    """Population-based training's exploit: ``dst`` takes ``src``'s weights and optimizer state (no
    tensor shared); ``dst`` keeps its own hyper-parameters (perturb them with ``set_hparams``)."""
    if src.spec != dst.spec or src.modules != dst.modules:
        raise ValueError(f"cannot copy slot {src.name!r} into {dst.name!r}: different adapter shapes")
    set_state(dst, get_state(src, src.lora_A[0].device if src.lora_A else "cpu"), hparams=False)


def _to(obj, device):
    """A nested optimizer state dict with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj
