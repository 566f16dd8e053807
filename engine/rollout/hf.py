"""The ``hf`` rollout backend: transformers + PEFT, one base model, one named adapter per group.

Runs anywhere (CPU included); it is the embedded default and what CI tests. Adapter versions arrive
as LoRA state dicts from the groups and are loaded into that group's named adapter in place.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, cast

from engine.rollout.types import RolloutRequest, RolloutResult

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys


class HFRollout:
    """Ray actor (``ray.remote(HFRollout)``) or a plain object; state lives here, not in globals."""

    def __init__(self, model_path: str, adapters: dict[str, dict], num_threads: int | None = None):
        import torch
        from peft import get_peft_model

        from engine.models.base import load_base, load_tokenizer, peft_lora_config

        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.tokenizer = load_tokenizer(model_path)
        base = load_base(model_path)
        # PEFT adapter names are internal ("g0", "g1", ...): a group called e.g. "a" or "lora" would
        # clash with PEFT's own "lora_" parameter prefix.
        self.slot = {group: f"g{i}" for i, group in enumerate(adapters)}
        names = list(adapters)
        self.model = get_peft_model(base, peft_lora_config(**adapters[names[0]]), adapter_name=self.slot[names[0]])
        for name in names[1:]:
            self.model.add_adapter(self.slot[name], peft_lora_config(**adapters[name]))
        self.model.eval()
        self.versions = {name: -1 for name in names}  # -1: no version published yet

    def add_groups(self, adapters: dict[str, dict]) -> None:
        """Serve more groups (each needs a ``publish`` before it generates): the groups of a device that
        was lost move to a device that is left."""
        from engine.models.base import peft_lora_config

        for name, lora in adapters.items():
            if name not in self.slot:
                self.slot[name] = f"g{len(self.slot)}"
                self.model.add_adapter(self.slot[name], peft_lora_config(**lora))
                self.versions[name] = -1
        self.model.eval()

    def publish_target(self) -> dict:
        """How the trainer publishes here: PEFT state dicts (no directory) in float32, the dtype the PEFT
        model keeps its LoRA weights in."""
        return {"root": None, "node": None, "dtype": "float32"}

    def publish(self, group: str, version: int, state_dict: dict) -> int:
        """Serve ``state_dict`` (LoRA weights, PEFT key names) as ``group``'s adapter from now on."""
        from peft import set_peft_model_state_dict

        slot = self.slot[group]
        # peft annotates the result as ``namedtuple`` (the factory); it is load_state_dict's _IncompatibleKeys
        result = cast("_IncompatibleKeys", set_peft_model_state_dict(self.model, state_dict, adapter_name=slot))
        lora_missing = [k for k in result.missing_keys if "lora_" in k and f".{slot}." in k]
        if result.unexpected_keys or lora_missing:
            raise ValueError(
                f"adapter of {group!r} does not fit: unexpected {result.unexpected_keys[:3]}, missing {lora_missing[:3]}"
            )
        self.versions[group] = version
        return version

    def publish_many(self, adapters: dict[str, tuple[int, dict]]) -> dict[str, int]:
        """``publish`` of several groups in one call: ``{group: (version, state_dict)}``."""
        return {g: self.publish(g, version, state) for g, (version, state) in adapters.items()}

    def runtime(self) -> str:
        from engine.models.base import torch_runtime

        return torch_runtime()

    def adapter_versions(self) -> dict[str, int]:
        return dict(self.versions)

    def generate(self, requests: list[RolloutRequest]) -> list[RolloutResult]:
        """All groups' requests of one step in as few ``generate`` calls as possible.

        Requests with the same sampling settings share one batch: PEFT's mixed-adapter inference
        (``adapter_names=``) runs each row through its own group's LoRA on the one base. The batch's
        seed is derived from all its requests' seeds, so the same step of the same population
        samples the same completions.
        """
        import torch

        for r in requests:
            if self.versions.get(r.group, -1) < 0:
                raise RuntimeError(f"group {r.group!r} has no published adapter")
        results: list[RolloutResult | None] = [None] * len(requests)
        buckets: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.max_new_tokens, r.greedy, r.temperature if not r.greedy else 0.0, r.top_p if not r.greedy else 1.0)
            buckets.setdefault(key, []).append(i)
        for idx in buckets.values():
            batch = [requests[i] for i in idx]
            t0 = time.perf_counter()
            torch.manual_seed(sum(r.seed * (k + 1) for k, r in enumerate(batch)) % (2**31 - 1))
            rows = self._generate_rows(batch)
            seconds = time.perf_counter() - t0
            start = 0
            for i, r in zip(idx, batch):
                size = len(r.prompt_ids) * r.n
                part = rows[start : start + size]
                start += size
                results[i] = RolloutResult(
                    group=r.group,
                    adapter_version=self.versions[r.group],
                    prompt_ids=[p for p in r.prompt_ids for _ in range(r.n)],
                    completion_ids=[c for c, _, _ in part],
                    logprobs=[lp for _, lp, _ in part],
                    finish_reasons=[f for _, _, f in part],
                    seconds=seconds,
                )
        return cast("list[RolloutResult]", results)  # every index is in exactly one bucket: no None left

    def _generate_rows(self, batch: list[RolloutRequest]) -> list[tuple[list[int], list[float], str]]:
        """One ``generate`` over every request's prompts (each repeated ``n`` times, prompt-major).

        Each distinct prompt is prefilled once and its KV cache copied to its ``n`` samples, so a step
        with ``group_size`` 8 computes its prompts once, not eight times (``generate`` then starts from
        the last prompt token of every row)."""
        import torch

        first = batch[0]
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        prompts = [p for r in batch for p in r.prompt_ids]  # [U] distinct prompts
        names = [self.slot[r.group] for r in batch for _ in r.prompt_ids]  # [U]
        rows = torch.repeat_interleave(
            torch.arange(len(prompts)), torch.tensor([r.n for r in batch for _ in r.prompt_ids])
        )  # [B]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [U, P] left-padded
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # [U, P]
        cache = self._prefill(input_ids[:, :-1], attention_mask[:, :-1], names) if width > 1 else None
        if cache is not None:
            cache.batch_select_indices(rows)  # [U, ...] -> [B, ...]
        sampling = (
            {"do_sample": False}
            if first.greedy
            else {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids[rows],
                attention_mask=attention_mask[rows],
                past_key_values=cache,
                max_new_tokens=first.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                output_logits=True,
                return_dict_in_generate=True,
                adapter_names=[names[i] for i in rows.tolist()],
                **sampling,
            )
        new = out.sequences[:, width:]  # [B, T]
        temperature = 1.0 if first.greedy else first.temperature
        logits = torch.stack(out.logits, dim=1).float() / temperature  # [B, T, V]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)  # [B, T]
        results = []
        for ids, lp in zip(new.tolist(), logprobs.tolist()):
            end = ids.index(eos) + 1 if eos in ids else len(ids)
            results.append((ids[:end], lp[:end], "stop" if eos in ids else "length"))
        return results

    def _prefill(self, input_ids, attention_mask, adapter_names: list[str]):
        """The KV cache of left-padded ``input_ids`` [U, P-1], each row through its own adapter."""
        import torch

        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        with torch.no_grad():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                adapter_names=adapter_names,
            )
        return out.past_key_values
