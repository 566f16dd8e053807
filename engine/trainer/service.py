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
from typing import TYPE_CHECKING, Any

from engine.trainer.fused import GroupBatch, GroupResult
from engine.trainer.slots import SlotHParams

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


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

    def __init__(
        self,
        model_path: str,
        slots: dict[str, SlotSpec],
        device: str = "cpu",
        dtype: str = "float32",
        num_threads: int | None = None,
        share_prompts: bool = True,
        token_budget: int | None = None,
        checkpointing: bool = False,
    ):
        import torch

        from engine.models.base import load_base
        from engine.trainer.multi_lora import MultiLoRAModel

        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.model = MultiLoRAModel(load_base(model_path, dtype, device))
        self.model_path, self.device = model_path, device
        self.share_prompts, self.token_budget = share_prompts and not checkpointing, token_budget
        if checkpointing:  # (a shared prompt's KV cache cannot be recomputed: prompts are not shared then)
            self.model.enable_checkpointing()
        self.specs = dict(slots)
        for name, spec in slots.items():
            self.model.add_slot(name, spec.lora, spec.seed, spec.hparams)
        self.versions = {name: 0 for name in slots}
        self.publish_to: dict | None = None  # the rollout service's publish_target, asked at the first publish
        self._writer: ThreadPoolExecutor | None = None  # a one-thread pool writing checkpoints in the background
        self._saving: tuple[str, Future[None]] | None = None  # (directory, future) of the checkpoint being written
        self._written: list[str] = []  # checkpoint directories completed since the last wait_saved

    def runtime(self) -> str:
        from engine.models.base import torch_runtime

        return torch_runtime()

    def node_id(self) -> str:
        """The Ray node this service runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def add_slots(self, slots: dict[str, SlotSpec]) -> None:
        """Take on more groups (version 0 until a checkpoint is loaded into them): the groups of a device
        that was lost move to a device that is left."""
        for name, spec in slots.items():
            if name not in self.model.slots:
                self.model.add_slot(name, spec.lora, spec.seed, spec.hparams)
                self.specs[name], self.versions[name] = spec, 0

    def base_storages(self) -> int:
        """Distinct storages of the frozen base's parameters (one copy, whatever the number of slots)."""
        return len({p.untyped_storage().data_ptr() for n, p in self.model.base.named_parameters() if "lora_" not in n})

    # --- 5-6. the fused step ------------------------------------------------------------------------

    def train(self, jobs: list[TrainJob]) -> list[GroupResult]:
        """Every group's GRPO update in one fused step; a group whose loss, gradient or new weights are
        non-finite is left as it was (``skipped``). Updated slots get a new version."""
        from engine.trainer.fused import fused_grpo_step
        from engine.trainer.slots import set_hparams

        for job in jobs:
            set_hparams(self.model.slots[job.batch.slot], **vars(job.hparams))
        results = fused_grpo_step(self.model, [j.batch for j in jobs], self.token_budget, self.share_prompts)
        for r in results:
            if not r.skipped:
                self.versions[r.slot] += 1
        # (the allocator keeps its cached blocks: vLLM's share of the GPU is reserved when its engine starts,
        # and emptying the cache every step made each step allocate its activations anew)
        return results

    # --- 7. publish -------------------------------------------------------------------------------

    def publish(self, rollout: Any, groups: list[str] | None = None) -> float:
        """Send the current version of ``groups``' adapters (default: all) to the rollout service in one
        call; returns the seconds it took. A vLLM rollout service on this node gets paths: this service
        writes each adapter's files itself (cast on the device, one host copy, one file write) where the
        engine reads them; any other gets PEFT state dicts in the dtype it serves."""
        import ray

        t0 = time.perf_counter()
        names = list(self.model.slots) if groups is None else groups
        if self.publish_to is None:
            target = ray.get(rollout.publish_target.remote())
            if target.get("node") != ray.get_runtime_context().get_node_id():
                target["root"] = None  # another node: its adapter directory is not ours to write
            self.publish_to = target
        if self.publish_to["root"] is not None:
            written = self.write_adapters(names, self.publish_to["root"], self.publish_to["dtype"])
            ray.get(rollout.load_published.remote({g: (self.versions[g], str(written[g])) for g in names}))
        else:
            states = self.adapter_states(names, self.publish_to["dtype"])
            ray.get(rollout.publish_many.remote({g: (self.versions[g], states[g]) for g in names}))
        return time.perf_counter() - t0

    def forget_publish_target(self) -> None:
        """Ask the rollout service where to publish again at the next ``publish`` (it was restarted)."""
        self.publish_to = None

    def write_adapter(self, group: str, root: str, dtype: str = "bfloat16") -> Path:
        """``group``'s current adapter as a vLLM/PEFT adapter directory (``write_adapter_dir``) under
        ``root``, in ``dtype``; returns it."""
        return self.write_adapters([group], root, dtype)[group]

    def write_adapters(self, groups: list[str], root: str, dtype: str = "bfloat16") -> dict[str, Path]:
        """``write_adapter`` of each group: all cast on the device and copied to the host at once, the
        files written in parallel."""
        from concurrent.futures import ThreadPoolExecutor

        from engine.rollout.vllm import vllm_adapter_config, write_adapter_dir
        from engine.trainer.slots import flat_adapters, write_safetensors

        def write(item) -> tuple[str, Path]:
            group, (layout, flat) = item
            config = vllm_adapter_config(self.specs[group].lora, self.model_path, [k for k, _ in layout])
            return group, write_adapter_dir(
                root, group, self.versions[group], config, lambda path: write_safetensors(path, layout, flat)
            )

        flats = flat_adapters([self.model.slots[g] for g in groups], dtype)
        with ThreadPoolExecutor(max_workers=min(8, len(groups)) or 1) as pool:
            return dict(pool.map(write, zip(groups, flats)))

    def adapter_states(self, groups: list[str], dtype: str = "float32") -> dict[str, dict]:
        """``groups``' adapters as PEFT-format state dicts on the host, cast to ``dtype`` on the device
        first (one device-to-host copy per adapter)."""
        from engine.trainer.slots import state_dicts

        return state_dicts([self.model.slots[g] for g in groups], dtype)

    # --- rebalancing --------------------------------------------------------------------------------

    def copy_slot(self, src: str, dst: str) -> int:
        """PBT's exploit: ``dst`` takes ``src``'s weights and optimizer state; returns ``dst``'s new version."""
        from engine.trainer.slots import copy_slot

        copy_slot(self.model.slots[src], self.model.slots[dst])
        self.versions[dst] += 1
        return self.versions[dst]

    def slot_state(self, group: str):
        """A host copy of ``group``'s slot (adapter, optimizer state, hyper-parameters), for a copy into a
        slot of another device's trainer (``take_slot_state``)."""
        from engine.trainer.slots import get_state

        return get_state(self.model.slots[group])

    def take_slot_state(self, group: str, state) -> int:
        """``copy_slot`` across devices: ``group`` takes ``state``'s weights and optimizer state (another
        trainer's ``slot_state``), keeping its own hyper-parameters; returns its new version."""
        from engine.trainer.slots import set_state

        set_state(self.model.slots[group], state, hparams=False)
        self.versions[group] += 1
        return self.versions[group]

    # --- checkpoints and adapters -------------------------------------------------------------------

    def save_checkpoint(self, directory: str, hps: dict[str, dict]) -> None:
        """Start writing ``<directory>/<group>.pt`` per group in ``hps``: adapter, optimizer state, version
        and the group's hyper-parameters, each written whole and renamed into place. The slots are
        copied to the host now (the checkpoint is of this moment); the files are written in the
        background while training goes on: ``wait_saved`` says when they are complete."""
        from concurrent.futures import ThreadPoolExecutor

        from engine.trainer.fused import finite_each
        from engine.trainer.slots import get_state

        self._settle()  # one checkpoint in flight at a time
        slots = [self.model.slots[g] for g in hps]
        bad = [s.name for s, ok in zip(slots, finite_each([s.params for s in slots])) if not ok]
        if bad:  # never reached through train(); a guard against a bug elsewhere
            raise ValueError(f"groups {bad}: non-finite adapter weights; not checkpointed")
        payloads = {
            g: {"adapter": st.adapter, "optimizer": st.optimizer, "version": self.versions[g], "hp": dict(hp)}
            for g, hp in hps.items()
            for st in [get_state(self.model.slots[g])]
        }
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorapop-checkpoint")
        self._saving = (directory, self._writer.submit(_write_checkpoint, directory, payloads))

    def wait_saved(self) -> list[str]:
        """Wait for the checkpoint being written; returns the directories completed since the last call
        ([] if none). A failed write raises here."""
        self._settle()
        done, self._written = self._written, []
        return done

    def _settle(self) -> None:
        if self._saving is not None:
            directory, future = self._saving
            self._saving = None
            future.result()
            self._written.append(directory)

    def load_checkpoint(self, directory: str | None, groups: list[str]) -> dict[str, dict | None]:
        """Restore ``groups``' slots from ``directory`` (None: their initial state, version 0); returns
        each group's checkpointed hyper-parameters (None without a checkpoint)."""
        import torch

        from engine.trainer.slots import SlotState, set_state

        self._settle()
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

        self._settle()
        for g, path in dirs.items():
            save_slot(self.model.slots[g], path, self.model_path)
        return dirs


def _write_checkpoint(directory: str, payloads: dict[str, dict]) -> None:
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for g, payload in payloads.items():
        tmp = d / f".{g}.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, d / f"{g}.pt")
