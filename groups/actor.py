"""``GroupActor``: one GRPO group = one LoRA adapter + its optimizer + its env + its reward functions.

The coordinator drives every group through the same two calls per step, so that the rollout
service can generate for all groups in one batch between them:

    request = group.begin(step)                    # 1. sample prompts, tokenize
    result  = rollout.generate([request, ...])     # 2. completions + sampler log-probs (all groups)
    request = group.observe(result)["request"]     #    a multi-turn env answers: next turn, or None
    ...                                            #    (a game agent's turns come from the coordinator)
    row     = group.learn(step)                    # 3-8. rewards -> advantages -> loss -> step -> publish

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
from envs.multiturn import MultiTurnEnv
from groups.episodes import Episodes
from rewards.registry import load_reward
from rewards.text import completion_text


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one group's step, derived from ``(seed, step)`` only (resume-safe)."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


class GroupActor:
    """Used as ``ray.remote(GroupActor)``; also works as a plain object (tests, debugging)."""

    def __init__(self, plan: GroupPlan, model_path: str, rollout: Any, num_threads: int = 1, device: str = "cpu",
                 dtype: str = "float32", share_prompts: bool = True):
        """``device``/``dtype``: where the frozen base lives for training (LoRA weights stay float32);
        ``share_prompts``: one forward of a prompt for all the samples that share it."""
        import torch
        from peft import get_peft_model

        from engine.models import load_base, load_tokenizer, peft_lora_config

        for p in plan.extra_sys_path:  # user reward modules named as 'module:function'
            if p not in sys.path:
                sys.path.append(p)
        torch.set_num_threads(num_threads)
        self.plan, self.name, self.hp = plan, plan.name, dict(plan.grpo)
        self.rollout = rollout
        self.game_role = plan.env.get("role")  # a game agent: the coordinator plays the game
        self.env = None if self.game_role is not None else build_env(plan.env, plan.seed, plan.tags)
        self.reward_fns = build_rewards(plan.rewards, plan.tags)
        self.is_correct = accuracy_fn(plan.tags)
        self.is_formatted = load_reward("format_exact", defaults=plan.tags)
        self.tokenizer = load_tokenizer(model_path)
        torch.manual_seed(plan.seed)  # LoRA A init; B starts at zero, so version 0 == the base
        self.device, self.share_prompts = device, share_prompts
        self.model = get_peft_model(load_base(model_path, dtype, device), peft_lora_config(**plan.lora))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.hp["lr"], betas=tuple(self.hp["adam_betas"]),
                                           weight_decay=self.hp["weight_decay"])
        self.version = 0
        self.dropped_prompts = 0 if self.env is None else self.env.drop_prompts(
            lambda row: len(self._prompt_ids(row["prompt"])) <= self.hp["max_prompt_length"])

    def startup_report(self) -> dict:
        """What happened while building this group (rows dropped for over-long prompts), and how its
        torch computes."""
        from engine.models import torch_runtime

        return {"group": self.name, "dropped_prompts": self.dropped_prompts, "runtime": torch_runtime()}

    # --- adapter --------------------------------------------------------------------------------

    def adapter_state(self) -> dict:
        from peft import get_peft_model_state_dict

        return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model).items()}

    def publish(self) -> float:
        """Send the current adapter version to the rollout service; returns the seconds it took."""
        import ray

        t0 = time.perf_counter()
        ray.get(self.rollout.publish.remote(self.name, self.version, self.adapter_state()))
        return time.perf_counter() - t0

    def get_state(self) -> dict:
        """Everything that defines this group's training from here on: adapter, optimizer, RNG, hyper-parameters."""
        import torch

        return {"adapter": self.adapter_state(), "optimizer": _to_cpu(self.optimizer.state_dict()), "hp": dict(self.hp),
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

    # --- episodes: one step or one evaluation ---------------------------------------------------

    def _prompt_ids(self, prompt) -> list[int]:
        """Chat template (conversations) or the plain string -> token ids."""
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) \
            if isinstance(prompt, list) else prompt
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, prompt) -> list[int]:
        """A first prompt's token ids; an over-long one (a generated task's) is an error, never truncated."""
        ids = self._prompt_ids(prompt)
        if len(ids) > self.hp["max_prompt_length"]:
            raise ValueError(f"group {self.name}: prompt of {len(ids)} tokens > max_prompt_length "
                             f"{self.hp['max_prompt_length']}: {prompt!r:.80}...")
        return ids

    def begin(self, step: int, rows: list[dict] | None = None) -> RolloutRequest | None:
        """1. Start this step's episodes: ``prompts_per_step`` rows of the env (a pure function of seed and
        step), ``group_size`` episodes each; returns the first turn's request. A game agent gets its rows
        (game instances) from the coordinator and its turns through ``turn``, so it returns None."""
        hp = self.hp
        sampling = {"max_new_tokens": hp["max_completion_length"], "temperature": hp["temperature"],
                    "top_p": hp["top_p"], "seed": step_seed(self.plan.seed, step), "greedy": False}
        if rows is None:
            rows = self.env.batch(step, hp["prompts_per_step"])
        return self._begin(rows, hp["group_size"], sampling)

    def begin_eval(self, n: int, temperature: float = 0.0, samples: int = 1,
                   rows: list[dict] | None = None) -> RolloutRequest | None:
        """Held-out episodes: greedy (``temperature == 0``) or fixed-seed sampling, the same seed every time."""
        sampling = {"max_new_tokens": self.hp["max_completion_length"], "temperature": temperature or 1.0,
                    "top_p": 1.0, "seed": step_seed(self.plan.seed, -1), "greedy": temperature == 0}
        if rows is None:
            rows = self.env.eval_rows(n)
        return self._begin(rows, 1 if temperature == 0 else samples, sampling)

    def _begin(self, rows: list[dict], n: int, sampling: dict) -> RolloutRequest | None:
        self._episodes = Episodes(self.tokenizer, self._encode, self.name, rows, n, sampling)
        self._turn = 0
        self._env_rewards: list[float] | None = None
        if self.game_role is not None:
            return None
        if isinstance(self.env, MultiTurnEnv):
            self._states = [self.env.reset(row) for row in rows for _ in range(n)]
            self._env_rewards = [0.0] * len(self._states)
        return self._episodes.first_request()

    def turn(self, observations: dict[int, Any]) -> RolloutRequest:
        """A game agent's turn: its first prompt or next user message per episode (from the coordinator)."""
        self._turn += 1
        return self._episodes.request(observations, self._turn)

    def observe(self, result: RolloutResult) -> dict:
        """2. Record a turn's completions; a multi-turn env answers them. Returns ``{"replies": {episode:
        text}, "request": the next turn's RolloutRequest or None}``."""
        replies = self._episodes.record(result)
        request = None
        if self._env_rewards is not None:
            observations = {}
            for e, text in replies.items():
                turn = self.env.step(self._states[e], text)
                self._env_rewards[e] += turn.reward
                if not turn.done and turn.observation is not None and \
                        self._episodes.transcripts[e].turns < self.env.max_turns:
                    observations[e] = turn.observation
            if observations:
                self._turn += 1
                request = self._episodes.request(observations, self._turn)
        return {"replies": replies, "request": request}

    def _score(self, env_rewards: list[float] | None, success: list | None):
        """3. Rewards per function (TRL signature; an env's or game's reward is the ``env_reward`` column),
        total, and correctness (the game's success, else the ``answer`` column)."""
        from rewards.scoring import score

        eps = self._episodes
        rows = [eps.rows[t.row] for t in eps.transcripts]
        prompts = [t.prompt for t in eps.transcripts]
        completions = eps.completions()
        columns = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
        env_rewards = env_rewards if env_rewards is not None else self._env_rewards
        if env_rewards is not None:
            columns["env_reward"] = list(env_rewards)
        scored = score(self.reward_fns, prompts, completions, columns)
        correct = [math.nan] * len(prompts)
        if success is not None:
            correct = [math.nan if c is None else float(c) for c in success]
        elif "answer" in columns:
            correct = [math.nan if c is None else c for c in self.is_correct(prompts, completions, **columns)]
        return scored, correct

    def learn(self, step: int, env_rewards: list[float] | None = None, success: list | None = None) -> dict:
        """Steps 3-8 of GRPO on this step's episodes; returns the metrics row and sample rows.
        A game agent gets its rewards and the game's success per episode from the coordinator."""
        import torch

        from engine.grpo import aggregation_weights, clipped_token_loss, completion_logprobs, group_advantages, k3_kl, masked_mean
        from engine.importance import importance_weights

        hp, G, eps = self.hp, self._episodes.n, self._episodes
        group_fault(self.name, step)
        t0 = time.perf_counter()
        # 3. rewards
        scored, correct = self._score(env_rewards, success)
        rewards = torch.tensor(scored.total, dtype=torch.float32)  # [B]
        # 4. group-relative advantages (over the episodes of one row)
        advantages = group_advantages(rewards, G, hp["scale_rewards"]).to(self.device)  # [B]
        # 5. loss on the trainer's own log-probs, clipped against the rollout-time ones; model tokens only.
        #    With importance-sampling correction (TRL's vllm_importance_sampling_correction) the ratio is
        #    taken against the trainer's own old log-probs and each token is weighted by
        #    exp(trainer_old - sampler), capped. Micro-batches add up to the full batch's loss.
        batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in self._pack().items()}
        mask, B = batch["mask"], batch["mask"].size(0)  # [B, L]
        max_len = hp["max_completion_length"] * max(t.turns for t in eps.transcripts)
        weights = aggregation_weights(hp["loss_type"], mask, max_len)  # [B, L]: loss = sum(token_loss * weights)
        size = hp["micro_batch_size"] or B
        chunks = [slice(i, i + size) for i in range(0, B, size)]

        def logprobs(sl: slice):  # [b, L]
            return completion_logprobs(self.model, batch["input_ids"][sl], batch["attention_mask"][sl], batch["P"],
                                       hp["temperature"], share_prompt=self.share_prompts)

        ref_logp = is_weights = None
        old = batch["old_logp"]
        if hp["beta"] > 0:
            with torch.no_grad(), self.model.disable_adapter():
                ref_logp = torch.cat([logprobs(sl) for sl in chunks])  # [B, L]
        if hp["vllm_importance_sampling_correction"]:
            with torch.no_grad():
                old = torch.cat([logprobs(sl) for sl in chunks])  # [B, L] trainer's old log-probs
            is_weights = importance_weights(old, batch["old_logp"], mask, hp["vllm_importance_sampling_mode"],
                                            hp["vllm_importance_sampling_cap"])  # [B, L] or [B, 1]
        self.model.train()
        for _ in range(hp["num_iterations"]):
            self.optimizer.zero_grad(set_to_none=True)
            parts = []
            for sl in chunks:
                logp = logprobs(sl)
                token_loss, clipped = clipped_token_loss(logp, old[sl], advantages[sl], hp["epsilon_low"], hp["epsilon_high"])
                if is_weights is not None:
                    token_loss = token_loss * is_weights[sl]
                kl = k3_kl(logp, ref_logp[sl]) if ref_logp is not None else torch.zeros_like(logp)
                loss = ((token_loss + hp["beta"] * kl) * weights[sl]).sum()
                loss.backward()
                parts.append((logp.detach(), clipped, kl.detach(), loss.detach()))
            # 6. optimizer step on the LoRA parameters only
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, hp["max_grad_norm"]))
            self.optimizer.step()
        logp, clipped, kl = (torch.cat([p[i] for p in parts]) for i in range(3))
        loss = sum(p[3] for p in parts)
        if self.device == "cuda":  # hand cached activation memory back: the GPU is shared with vLLM and the other groups
            torch.cuda.empty_cache()
        self.model.eval()
        train_s = time.perf_counter() - t0
        # 7. publish the new adapter version to the rollout service
        served = min(t.adapter_version for t in eps.transcripts)
        self.version += 1
        publish_s = self.publish()
        # 8. metrics row + sample rows
        lengths = [int(sum(t.mask)) for t in eps.transcripts]
        turns = [t.turns for t in eps.transcripts]
        metrics = {
            "step": step, "group": self.name, "cohort": self.plan.cohort, "adapter_version": served,
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
            **{f"reward/{k}": _nanmean(v) for k, v in scored.per_function.items()},
            "reward_failures": len(scored.failures), "accuracy": _nanmean(correct),
            "advantage_abs": float(advantages.abs().mean()), "loss": float(loss.detach()),
            "kl": masked_mean(kl.detach(), mask), "clip_ratio": masked_mean(clipped, mask),
            "logprob_mismatch": masked_mean((logp.detach() - batch["old_logp"]).abs(), mask) if hp["num_iterations"] == 1 else math.nan,
            "is_weight_mean": masked_mean(is_weights.expand_as(mask), mask) if is_weights is not None else math.nan,
            "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], "temperature": hp["temperature"],
            "beta": hp["beta"], "prompts_per_step": len(eps.rows),
            "completion_len_mean": sum(lengths) / len(lengths), "completion_len_max": max(lengths),
            "turns_mean": sum(turns) / len(turns),
            "truncated_frac": sum(t.finish_reason == "length" for t in eps.transcripts) / len(lengths),
            "time/rollout_s": eps.rollout_seconds, "time/train_s": train_s, "time/publish_s": publish_s,
        }
        samples = [{
            "step": step, "group": self.name, "prompt_index": i // G, "sample_index": i % G,
            **self._sample_text(t), "answer": str(eps.rows[t.row].get("answer")), "reward": scored.total[i],
            **{f"reward/{k}": v[i] for k, v in scored.per_function.items()},
            "correct": correct[i], "advantage": float(advantages[i]), "finish_reason": t.finish_reason,
            "completion_tokens": lengths[i], "turns": t.turns, "adapter_version": t.adapter_version,
        } for i, t in enumerate(eps.transcripts)]
        return {"metrics": metrics, "samples": samples, "failures": scored.failures}

    def _sample_text(self, t) -> dict:
        """Prompt and completion as text; a multi-turn completion keeps its turn markers."""
        decode = self.tokenizer.decode
        completion = t.replies[0] if t.turns == 1 else decode(t.ids, skip_special_tokens=False)
        return {"prompt": decode(t.prompt_ids, skip_special_tokens=False), "completion": completion}

    def _pack(self) -> dict:
        """First prompts left-padded to P, the rest (model turns + observations) right-padded to L:
        ids [B, P+L]; loss mask [B, L] (1 on sampled tokens); sampler log-probs [B, L]."""
        import torch

        pad = self.tokenizer.pad_token_id
        transcripts = self._episodes.transcripts
        P = max(len(t.prompt_ids) for t in transcripts)
        L = max(1, max(len(t.ids) for t in transcripts))
        ids, attn, mask, old = [], [], [], []
        for t in transcripts:
            p, c, gap = t.prompt_ids, t.ids, L - len(t.ids)
            ids.append([pad] * (P - len(p)) + p + c + [pad] * gap)
            attn.append([0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * gap)
            mask.append(t.mask + [0.0] * gap)
            old.append(t.logprobs + [0.0] * gap)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attn), "P": P,
                "mask": torch.tensor(mask), "old_logp": torch.tensor(old)}

    # --- held-out evaluation ----------------------------------------------------------------------

    def evaluate(self, step: int, env_rewards: list[float] | None = None, success: list | None = None) -> list[dict]:
        """One row per held-out episode: reward per function, correctness, format, token ids and log-probs."""
        eps, n = self._episodes, self._episodes.n
        scored, correct = self._score(env_rewards, success)
        formatted = self.is_formatted(None, [completion_text(c) for c in eps.completions()])
        return [{
            "step": step, "group": self.name, "prompt_index": i // n, "sample_index": i % n,
            **self._sample_text(t), "answer": str(eps.rows[t.row].get("answer")), "reward": scored.total[i],
            **{f"reward/{k}": v[i] for k, v in scored.per_function.items()}, "correct": correct[i],
            "format_ok": formatted[i], "turns": t.turns, "adapter_version": t.adapter_version,
            "prompt_ids": t.prompt_ids, "completion_ids": t.ids, "logprobs": t.logprobs, "completion_mask": t.mask,
        } for i, t in enumerate(eps.transcripts)]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _to_cpu(obj):
    """A (nested) state dict with every tensor on the CPU: checkpoints and donor states cross processes."""
    if hasattr(obj, "detach"):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def default_threads(num_groups: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_groups))
