"""The trainer service: one Ray actor per device holding the frozen base once and one slot per group.

Group actors hold no model: each step they send their packed batch (``fused.GroupBatch``) with their
slot's optimizer settings, the service runs every group's GRPO update in one fused step
(``fused.fused_grpo_step``), then publishes every updated adapter to the rollout service in one call.
Checkpoints hold each slot's adapter, optimizer state, version and its group's hyper-parameters, one
``<group>.pt`` per group as before; adapters save in PEFT format.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.trainer.fused import GroupBatch, GroupResult
from engine.trainer.slots import SlotHParams


@dataclass
class SlotSpec:
    """What a group's slot is made of: its LoRA shape, the seed of its init, its optimizer settings."""

    lora: dict
    """r, alpha, dropout, target_modules (the group's ``lora:`` block)."""
    seed: int
    """Seed of the LoRA A init (B starts at zero: version 0 is the base)."""
    hparams: SlotHParams


@dataclass
class TrainJob:
    """One group's part of a fused step: its batch and its slot's optimizer settings for this step."""

    batch: GroupBatch
    hparams: SlotHParams


class TrainerService:
    """Used as ``ray.remote(TrainerService)``; state lives here, not in globals."""

    def __init__(self, model_path: str, slots: dict[str, SlotSpec], device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None, share_prompts: bool = True, token_budget: int | None = None):
        import torch

        from engine.models import load_base
        from engine.trainer.multi_lora import MultiLoRAModel

        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.model = MultiLoRAModel(load_base(model_path, dtype, device))
        self.model_path, self.device = model_path, device
        self.share_prompts, self.token_budget = share_prompts, token_budget
        self.specs = dict(slots)
        for name, spec in slots.items():
            self.model.add_slot(name, spec.lora, spec.seed, spec.hparams)
        self.versions = {name: 0 for name in slots}

    def runtime(self) -> str:
        from engine.models import torch_runtime

        return torch_runtime()

    def base_storages(self) -> int:
        """Distinct storages of the frozen base's parameters (one copy, whatever the number of slots)."""
        return len({p.untyped_storage().data_ptr() for n, p in self.model.base.named_parameters() if "lora_" not in n})

    # --- 5-6. the fused step ------------------------------------------------------------------------

    def train(self, jobs: list[TrainJob]) -> list[GroupResult]:
        """Every group's GRPO update in one fused step; a group whose loss, gradient or new weights are
        non-finite is left as it was (``skipped``). Updated slots get a new version."""
        import torch

        from engine.trainer.fused import fused_grpo_step
        from engine.trainer.slots import get_state, set_hparams, set_state

        for job in jobs:
            set_hparams(self.model.slots[job.batch.slot], **vars(job.hparams))
        before = {j.batch.slot: get_state(self.model.slots[j.batch.slot], self.model.device) for j in jobs}
        results = fused_grpo_step(self.model, [j.batch for j in jobs], self.token_budget, self.share_prompts)
        for r in results:
            slot = self.model.slots[r.slot]
            if not r.skipped and not all(bool(torch.isfinite(p).all()) for p in slot.params):
                set_state(slot, before[r.slot])  # a finite step to non-finite weights (e.g. a huge lr): undone
                r.skipped, r.reason = True, "non-finite weights after the optimizer step"
            if not r.skipped:
                self.versions[r.slot] += 1
            r.logp = None if r.logp is None else r.logp.cpu()
        if self.device == "cuda":  # hand cached activation memory back: the GPU is shared with vLLM
            torch.cuda.empty_cache()
        return results

    # --- 7. publish -------------------------------------------------------------------------------

    def publish(self, rollout: Any, groups: list[str] | None = None) -> float:
        """Send the current version of ``groups``' adapters (default: all) to the rollout service in one
        call; returns the seconds it took."""
        import ray

        from engine.trainer.slots import state_dict

        t0 = time.perf_counter()
        names = list(self.model.slots) if groups is None else groups
        ray.get(rollout.publish_many.remote({g: (self.versions[g], state_dict(self.model.slots[g])) for g in names}))
        return time.perf_counter() - t0

    def adapter_state(self, group: str) -> dict:
        from engine.trainer.slots import state_dict

        return state_dict(self.model.slots[group])

    # --- rebalancing --------------------------------------------------------------------------------

    def copy_slot(self, src: str, dst: str) -> int:
        """PBT's exploit: ``dst`` takes ``src``'s weights and optimizer state; returns ``dst``'s new version."""
        from engine.trainer.slots import copy_slot

        copy_slot(self.model.slots[src], self.model.slots[dst])
        self.versions[dst] += 1
        return self.versions[dst]

    # --- checkpoints and adapters -------------------------------------------------------------------

    def save_checkpoint(self, directory: str, hps: dict[str, dict]) -> None:
        """``<directory>/<group>.pt`` per group in ``hps``: adapter, optimizer state, version and the
        group's hyper-parameters, each written whole and renamed into place."""
        import torch

        from engine.trainer.slots import get_state

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for g, hp in hps.items():
            state = get_state(self.model.slots[g])
            bad = [k for k, v in state.adapter.items() if not bool(torch.isfinite(v).all())]
            if bad:  # never reached through train(); a guard against a bug elsewhere
                raise ValueError(f"group {g}: non-finite adapter weights {bad[:2]}; not checkpointed")
            tmp = d / f".{g}.pt.tmp"
            torch.save({"adapter": state.adapter, "optimizer": state.optimizer, "version": self.versions[g],
                        "hp": dict(hp)}, tmp)
            os.replace(tmp, d / f"{g}.pt")

    def load_checkpoint(self, directory: str | None, groups: list[str]) -> dict[str, dict | None]:
        """Restore ``groups``' slots from ``directory`` (None: their initial state, version 0); returns
        each group's checkpointed hyper-parameters (None without a checkpoint)."""
        import torch

        from engine.trainer.slots import SlotState, set_state

        out: dict[str, dict | None] = {}
        for g in groups:
            if directory is None:
                self.model.remove_slot(g)
                spec = self.specs[g]
                self.model.add_slot(g, spec.lora, spec.seed, spec.hparams)
                self.versions[g], out[g] = 0, None
                continue
            saved = torch.load(Path(directory) / f"{g}.pt", weights_only=False)
            slot = self.model.slots[g]
            set_state(slot, SlotState(saved["adapter"], saved["optimizer"], slot.hparams), hparams=False)
            self.versions[g], out[g] = saved["version"], saved["hp"]
        return out

    def save_adapters(self, dirs: dict[str, str]) -> dict[str, str]:
        """Each group's adapter in PEFT format (``PeftModel.from_pretrained(base, path)``)."""
        from engine.trainer.slots import save_slot

        for g, path in dirs.items():
            save_slot(self.model.slots[g], path, self.model_path)
        return dirs

