"""``GroupActor``: one GRPO group = one LoRA adapter + its optimizer + its env + its reward functions.

The coordinator drives every group through the same two calls per step, so that the rollout
service can generate for all groups in one batch between them:

    request = group.rollout_request(step)          # 1. sample prompts, tokenize
    result  = rollout.generate([request, ...])     # 2. completions + sampler log-probs (all groups)
    row     = group.learn(step, result)            # 3-8. rewards -> advantages -> loss -> step -> publish

The trainer holds its own frozen copy of the base (the rollout service holds another); the KL
reference is that base with the adapter disabled, so no second model is loaded.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.builders import GroupPlan, accuracy_fn, build_env, build_rewards
from engine.faults import group_fault
from engine.rollout.types import RolloutRequest, RolloutResult
from rewards.registry import load_reward


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one group's step, derived from ``(seed, step)`` only (resume-safe)."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


class GroupActor:
    """Used as ``ray.remote(GroupActor)``; also works as a plain object (tests, debugging)."""

    def __init__(self, plan: GroupPlan, model_path: str, rollout: Any, num_threads: int = 1):
        import torch
        from peft import get_peft_model

        from engine.models import load_base, load_tokenizer, peft_lora_config

        for p in plan.extra_sys_path:  # user reward modules named as 'module:function'
            if p not in sys.path:
                sys.path.append(p)
        torch.set_num_threads(num_threads)
        self.plan, self.name, self.hp = plan, plan.name, dict(plan.grpo)
        self.rollout = rollout
        self.env = build_env(plan.env, plan.seed, plan.tags)
        self.reward_fns = build_rewards(plan.rewards, plan.tags)
        self.is_correct = accuracy_fn(plan.tags)
        self.is_formatted = load_reward("format_exact", defaults=plan.tags)
        self.tokenizer = load_tokenizer(model_path)
        torch.manual_seed(plan.seed)  # LoRA A init; B starts at zero, so version 0 == the base
        self.model = get_peft_model(load_base(model_path), peft_lora_config(**plan.lora))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.hp["lr"], betas=tuple(self.hp["adam_betas"]),
                                           weight_decay=self.hp["weight_decay"])
        self.version = 0
        self._rows: list[dict] = []
        self.dropped_prompts = self.env.drop_prompts(lambda row: len(self._prompt_ids(row)) <= self.hp["max_prompt_length"])

    def startup_report(self) -> dict:
        """What happened while building this group (rows dropped for over-long prompts)."""
        return {"group": self.name, "dropped_prompts": self.dropped_prompts}

    # --- adapter --------------------------------------------------------------------------------

    def adapter_state(self) -> dict:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def publish(self) -> float:
        """Send the current adapter version to the rollout service; returns the seconds it took."""
        import ray

        t0 = time.perf_counter()
        ray.get(self.rollout.publish.remote(self.name, self.version, self.adapter_state()))
        return time.perf_counter() - t0

    def get_state(self) -> dict:
        """Everything that defines this group's training from here on: adapter, optimizer, RNG, hyper-parameters."""
        import torch

        return {"adapter": self.adapter_state(), "optimizer": self.optimizer.state_dict(), "hp": dict(self.hp),
                "version": self.version, "torch_rng": torch.get_rng_state()}

    def set_state(self, state: dict, hp: dict | None = None, bump_version: bool = False) -> int:
        """Load a state (own checkpoint, or a donor's for exploit_explore) and publish it; returns the version served."""
        import copy

        import torch
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.set_hparams(**(hp or state["hp"]))
        self.version = self.version + 1 if bump_version else state["version"]
        if not bump_version:
            torch.set_rng_state(state["torch_rng"])
        self.publish()
        return self.version

    def hparams(self) -> dict:
        """The current hyper-parameters (what rebalancing compares and copies)."""
        return dict(self.hp)

    def set_hparams(self, **hp) -> dict:
        """Change hyper-parameters (rebalancing); the learning rate goes into the optimizer too."""
        unknown = set(hp) - set(self.hp)
        if unknown:
            raise KeyError(f"unknown hyper-parameters {sorted(unknown)}")
        self.hp.update(hp)
        for group in self.optimizer.param_groups:
            group["lr"] = self.hp["lr"]
        return dict(self.hp)

    def save_checkpoint(self, path: str) -> str:
        """``torch.save`` of ``get_state()``, written whole and renamed into place."""
        import torch

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        torch.save(self.get_state(), tmp)
        os.replace(tmp, target)
        return path

    def load_checkpoint(self, path: str) -> int:
        import torch

        return self.set_state(torch.load(path, weights_only=False))

    def save_adapter(self, path: str) -> str:
        """PEFT format (adapter_config.json + adapter_model.safetensors); loads with PeftModel.from_pretrained."""
        self.model.save_pretrained(path)
        return path

    # --- one step -------------------------------------------------------------------------------

    def _prompt_ids(self, row: dict) -> list[int]:
        """Chat template (conversations) or the plain string -> token ids."""
        p = row["prompt"]
        text = self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) if isinstance(p, list) else p
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_prompts(self, rows: list[dict]) -> list[list[int]]:
        """Token ids per row; an over-long prompt (a generated task's) is an error, never truncated."""
        out = []
        for row in rows:
            ids = self._prompt_ids(row)
            if len(ids) > self.hp["max_prompt_length"]:
                raise ValueError(f"group {self.name}: prompt of {len(ids)} tokens > max_prompt_length "
                                 f"{self.hp['max_prompt_length']}: {row['prompt']!r:.80}...")
            out.append(ids)
        return out

    def rollout_request(self, step: int) -> RolloutRequest:
        """1. Sample ``prompts_per_step`` rows (a pure function of seed and step) and tokenize them."""
        self._rows = self.env.batch(step, self.hp["prompts_per_step"])
        return RolloutRequest(
            group=self.name, prompt_ids=self._encode_prompts(self._rows), n=self.hp["group_size"],
            max_new_tokens=self.hp["max_completion_length"], temperature=self.hp["temperature"],
            top_p=self.hp["top_p"], seed=step_seed(self.plan.seed, step))

    def _score(self, rows: list[dict], result: RolloutResult, n: int):
        """3. Rewards per function (TRL signature), total, and correctness."""
        from rewards.scoring import score

        texts = self.tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
        prompts = [row["prompt"] for row in rows for _ in range(n)]
        completions = [[{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts)]
        columns = {k: [row.get(k) for row in rows for _ in range(n)] for k in rows[0] if k != "prompt"}
        scored = score(self.reward_fns, prompts, completions, columns)
        correct = [math.nan] * len(texts)
        if "answer" in columns:
            correct = [math.nan if c is None else c for c in self.is_correct(prompts, completions, **columns)]
        return texts, scored, correct

    def learn(self, step: int, result: RolloutResult) -> dict:
        """Steps 3-8 of GRPO on the completions of this step; returns the metrics row and sample rows."""
        import torch

        from engine.grpo import LOSS_AGGREGATION, clipped_token_loss, completion_logprobs, group_advantages, k3_kl, masked_mean

        hp, G, rows = self.hp, self.hp["group_size"], self._rows
        group_fault(self.name, step)
        t0 = time.perf_counter()
        # 3. rewards
        texts, scored, correct = self._score(rows, result, G)
        rewards = torch.tensor(scored.total, dtype=torch.float32)  # [B]
        # 4. group-relative advantages
        advantages = group_advantages(rewards, G, hp["scale_rewards"])  # [B]
        # 5. loss on the trainer's own log-probs, clipped against the rollout-time ones
        batch = self._pack(result)
        if hp["beta"] > 0:
            with torch.no_grad(), self.model.disable_adapter():
                ref_logp = completion_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["P"], hp["temperature"])
        self.model.train()
        for _ in range(hp["num_iterations"]):
            logp = completion_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["P"], hp["temperature"])  # [B, L]
            token_loss, clipped = clipped_token_loss(logp, batch["old_logp"], advantages, hp["epsilon_low"], hp["epsilon_high"])
            kl = k3_kl(logp, ref_logp) if hp["beta"] > 0 else torch.zeros_like(logp)
            loss = LOSS_AGGREGATION[hp["loss_type"]](token_loss + hp["beta"] * kl, batch["mask"], hp["max_completion_length"])
            # 6. optimizer step on the LoRA parameters only
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, hp["max_grad_norm"]))
            self.optimizer.step()
        self.model.eval()
        train_s = time.perf_counter() - t0
        # 7. publish the new adapter version to the rollout service
        self.version += 1
        publish_s = self.publish()
        # 8. metrics row + sample rows
        mask = batch["mask"]
        lengths = [len(c) for c in result.completion_ids]
        metrics = {
            "step": step, "group": self.name, "cohort": self.plan.cohort, "adapter_version": result.adapter_version,
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
            **{f"reward/{k}": _nanmean(v) for k, v in scored.per_function.items()},
            "reward_failures": len(scored.failures), "accuracy": _nanmean(correct),
            "advantage_abs": float(advantages.abs().mean()), "loss": float(loss.detach()),
            "kl": masked_mean(kl.detach(), mask), "clip_ratio": masked_mean(clipped, mask),
            "logprob_mismatch": masked_mean((logp.detach() - batch["old_logp"]).abs(), mask) if hp["num_iterations"] == 1 else math.nan,
            "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], "temperature": hp["temperature"],
            "beta": hp["beta"], "prompts_per_step": hp["prompts_per_step"],
            "completion_len_mean": sum(lengths) / len(lengths), "completion_len_max": max(lengths),
            "truncated_frac": sum(f == "length" for f in result.finish_reasons) / len(lengths),
            "time/rollout_s": result.seconds, "time/train_s": train_s, "time/publish_s": publish_s,
        }
        samples = [{
            "step": step, "group": self.name, "prompt_index": i // G, "sample_index": i % G,
            "prompt": self.tokenizer.decode(result.prompt_ids[i], skip_special_tokens=False), "completion": texts[i],
            "answer": str(rows[i // G].get("answer")), "reward": scored.total[i],
            **{f"reward/{k}": v[i] for k, v in scored.per_function.items()},
            "correct": correct[i], "advantage": float(advantages[i]), "finish_reason": result.finish_reasons[i],
            "completion_tokens": lengths[i], "adapter_version": result.adapter_version,
        } for i in range(len(texts))]
        return {"metrics": metrics, "samples": samples, "failures": scored.failures}

    def _pack(self, result: RolloutResult) -> dict:
        """Prompts left-padded to P, completions right-padded to L: ids [B, P+L], mask [B, L], old log-probs [B, L]."""
        import torch

        pad = self.tokenizer.pad_token_id
        P = max(len(p) for p in result.prompt_ids)
        L = max(1, max(len(c) for c in result.completion_ids))
        ids, attn, mask, old = [], [], [], []
        for p, c, lp in zip(result.prompt_ids, result.completion_ids, result.logprobs):
            ids.append([pad] * (P - len(p)) + p + c + [pad] * (L - len(c)))
            attn.append([0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (L - len(c)))
            mask.append([1.0] * len(c) + [0.0] * (L - len(c)))
            old.append(lp + [0.0] * (L - len(c)))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attn), "P": P,
                "mask": torch.tensor(mask), "old_logp": torch.tensor(old)}

    # --- held-out evaluation ----------------------------------------------------------------------

    def eval_request(self, step: int, n: int, temperature: float = 0.0, samples: int = 1) -> RolloutRequest:
        """Held-out rows: greedy (``temperature == 0``) or fixed-seed sampling, the same seed at every evaluation."""
        self._eval_rows = self.env.eval_rows(n)
        self._eval_n = 1 if temperature == 0 else samples
        return RolloutRequest(group=self.name, prompt_ids=self._encode_prompts(self._eval_rows), n=self._eval_n,
                              max_new_tokens=self.hp["max_completion_length"], greedy=temperature == 0,
                              temperature=temperature or 1.0, seed=step_seed(self.plan.seed, -1))

    def evaluate(self, step: int, result: RolloutResult) -> list[dict]:
        """One row per held-out completion: reward per function, correctness, format, token ids and log-probs."""
        n = self._eval_n
        texts, scored, correct = self._score(self._eval_rows, result, n)
        formatted = self.is_formatted(None, texts)
        return [{
            "step": step, "group": self.name, "prompt_index": i // n, "sample_index": i % n,
            "prompt": self.tokenizer.decode(result.prompt_ids[i]), "completion": texts[i],
            "answer": str(self._eval_rows[i // n].get("answer")), "reward": scored.total[i],
            **{f"reward/{k}": v[i] for k, v in scored.per_function.items()}, "correct": correct[i],
            "format_ok": formatted[i], "adapter_version": result.adapter_version, "prompt_ids": result.prompt_ids[i],
            "completion_ids": result.completion_ids[i], "logprobs": result.logprobs[i],
        } for i in range(len(texts))]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def default_threads(num_groups: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_groups))
