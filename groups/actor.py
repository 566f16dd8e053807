"""``GroupActor``: one GRPO group's identity, env, reward functions, episodes, scoring, advantages and
hyper-parameters. It loads no model: its adapter and optimizer are its slot in the trainer service.

The coordinator drives every group through the same calls per step, so that the rollout service
generates for all groups in one batch and the trainer service updates them all in one fused step:

    request = group.begin(step)                    # 1. sample prompts, tokenize
    result  = rollout.generate([request, ...])     # 2. completions + sampler log-probs (all groups)
    group.observe(result)                          #    record; then a multi-turn env answers:
    request = group.answer()                       #    the next turn's request, or None
    ...                                            #    (a game agent's turns come from the coordinator)
    job     = group.prepare(step)                  # 3-4. rewards -> advantages -> packed batch
    results = trainer.train([job, ...])            # 5-6. one fused loss/backward, each slot's own step
    trainer.publish(rollout)                       # 7. every updated adapter in one call
    out     = group.finish(step, result, ...)      # 8. StepOutput: metrics row, sample rows
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config.builders import GroupPlan, accuracy_fn, build_env, build_rewards
from engine.config.faults import group_fault
from engine.config.schema import GameEnvConfig
from engine.rollout.types import RolloutRequest, RolloutResult
from envs.multiturn import MultiTurnEnv
from groups.episodes import Episodes
from rewards.registry import load_reward
from rewards.text import completion_text

if TYPE_CHECKING:
    from engine.trainer.fused import GroupResult, Packed
    from engine.trainer.service import TrainJob
    from rewards.scoring import RewardResult


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of one group's step, derived from ``(seed, step)`` only (resume-safe)."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


@dataclass
class Observed:
    """A turn's completions, recorded (``GroupActor.observe``)."""

    replies: dict[int, str]
    """Each episode's new reply text, by episode index (what a game records)."""
    answers: bool
    """True: the group's own env (multi-turn) answers them (``GroupActor.answer``); a single-turn
    group's episodes are over, a game agent's game answers it."""


@dataclass
class StepOutput:
    """One group's step, as the coordinator records it (``GroupActor.finish``)."""

    metrics: dict[str, Any]
    """The group's ``steps/`` row."""
    samples: list[dict[str, Any]]
    """Its ``samples/`` rows, one per episode."""
    failures: dict[str, str]
    """Reward functions that failed on this batch: name -> error (``reward_failure`` events)."""
    skipped: str | None
    """Why its update was skipped (an ``update_skipped`` event), or None when it was applied."""


class GroupActor:
    """The coordinator runs it as ``ray.remote(GroupActor)``, but nothing in it uses Ray: it works as a
    plain object too, as the unit tests use it. It holds no model: its adapter and optimizer are its
    slot in the trainer service."""

    def __init__(self, plan: GroupPlan, model_path: str):
        """``model_path``: where the tokenizer is (the base model's directory)."""
        from engine.models.base import load_tokenizer

        for p in plan.extra_sys_path:  # user reward modules named as 'module:function'
            if p not in sys.path:
                sys.path.append(p)
        self.plan, self.name, self.hp = plan, plan.name, plan.grpo.model_copy()
        self.game_role = plan.env.role if isinstance(plan.env, GameEnvConfig) else None  # the coordinator plays games
        self.env = None if self.game_role is not None else build_env(plan.env, plan.seed, plan.tags, plan.eval_seed)
        self.reward_fns = build_rewards(plan.rewards, plan.tags, plan.extra_sys_path)
        self.is_correct = accuracy_fn(plan.tags)
        self.is_formatted = load_reward("format_exact", defaults=plan.tags.model_dump())
        self._logged: tuple[dict, dict] = ({}, {})  # what reward functions logged while scoring (``_score``)
        self._rows_used = 0  # training rows taken from the env so far
        self.tokenizer = load_tokenizer(model_path)
        self.dropped_prompts = (
            0
            if self.env is None
            else self.env.drop_prompts(lambda row: len(self._prompt_ids(row["prompt"])) <= self.hp.max_prompt_length)
        )

    def startup_report(self) -> dict:
        """What happened while building this group (rows dropped for over-long prompts)."""
        return {"group": self.name, "dropped_prompts": self.dropped_prompts}

    # --- hyper-parameters (rebalancing reads and changes them; each step sends them to the trainer) ---

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def hparams(self) -> dict:
        """The current hyper-parameters (what rebalancing compares and copies)."""
        return self.hp.model_dump()

    def rows_used(self) -> int:
        """Training rows taken from the env so far (where the next step's rows start; checkpointed)."""
        return self._rows_used

    def set_rows_used(self, n: int | None, step: int = 0) -> None:
        """Restore the position (a checkpoint's); ``None``: the position after ``step`` steps of the current
        ``prompts_per_step`` (a fresh start, or a checkpoint that predates the position)."""
        self._rows_used = n if n is not None else step * self.hp.prompts_per_step

    def set_hparams(self, **hp) -> dict:
        """Change hyper-parameters (rebalancing; a checkpoint's on restore). The optimizer's (lr, betas,
        weight decay, grad clip) reach the group's trainer slot with its next batch."""
        unknown = set(hp) - set(type(self.hp).model_fields)
        if unknown:
            raise KeyError(f"unknown hyper-parameters {sorted(unknown)}")
        self.hp = self.hp.model_copy(update=hp)  # (values as rebalancing computed them, e.g. a perturbed lr)
        return self.hp.model_dump()

    # --- episodes: one step or one evaluation ---------------------------------------------------

    def _prompt_ids(self, prompt) -> list[int]:
        """Chat template (conversations) or the plain string -> token ids."""
        from engine.models.base import prompt_ids

        return prompt_ids(self.tokenizer, prompt)

    def _encode(self, prompt) -> list[int]:
        """A first prompt's token ids; an over-long one (a generated task's) is an error, never truncated."""
        ids = self._prompt_ids(prompt)
        if len(ids) > self.hp.max_prompt_length:
            raise ValueError(
                f"group {self.name}: prompt of {len(ids)} tokens > max_prompt_length "
                f"{self.hp.max_prompt_length}: {prompt!r:.80}..."
            )
        return ids

    def begin(self, step: int, rows: list[dict] | None = None) -> RolloutRequest | None:
        """1. Start this step's episodes: ``prompts_per_step`` rows of the env (a pure function of seed and
        step), ``group_size`` episodes each; returns the first turn's request. A game agent gets its rows
        (game instances) from the coordinator and its turns through ``turn``, so it returns None."""
        hp = self.hp
        sampling = {
            "max_new_tokens": hp.max_completion_length,
            "temperature": hp.temperature,
            "top_p": hp.top_p,
            "seed": step_seed(self.plan.seed, step),
            "greedy": False,
        }
        if rows is None:  # the next rows: however prompts_per_step changed (reallocate), none skipped or repeated
            assert self.env is not None  # (a game agent, which has none, is given its rows)
            rows = self.env.rows_from(self._rows_used, hp.prompts_per_step, step)
            self._rows_used += hp.prompts_per_step
        return self._begin(rows, hp.group_size, sampling)

    def begin_eval(
        self, n: int, temperature: float = 0.0, samples: int = 1, rows: list[dict] | None = None
    ) -> RolloutRequest | None:
        """Held-out episodes: greedy (``temperature == 0``) or fixed-seed sampling, the same seed every time."""
        sampling = {
            "max_new_tokens": self.hp.max_completion_length,
            "temperature": temperature or 1.0,
            "top_p": 1.0,
            "seed": step_seed(self.plan.seed, -1),
            "greedy": temperature == 0,
        }
        if rows is None:
            assert self.env is not None  # (a game agent, which has none, is given its rows)
            rows = self.env.eval_rows(n)
        return self._begin(rows, 1 if temperature == 0 else samples, sampling)

    def _begin(self, rows: list[dict], n: int, sampling: dict) -> RolloutRequest | None:
        self._episodes = Episodes(self.tokenizer, self._encode, self.name, rows, n, sampling)
        self._turn = 0
        self._replies: dict[int, str] = {}  # the last round's replies (what ``answer`` answers)
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

    def observe(self, result: RolloutResult) -> Observed:
        """2. Record a turn's completions (the model's replies, for a game to read); says whether this
        group's own env answers them (a multi-turn env: ``answer``)."""
        self._replies = self._episodes.record(result)
        return Observed(self._replies, answers=self._env_rewards is not None)

    def answer(self) -> RolloutRequest | None:
        """2. The multi-turn env answers the last replies: each episode's reward, and the next turn's
        request for the episodes that go on (None when all are over)."""
        assert isinstance(self.env, MultiTurnEnv) and self._env_rewards is not None  # (``observe`` said so)
        observations = {}
        for e, text in self._replies.items():
            turn = self.env.step(self._states[e], text)
            self._env_rewards[e] += turn.reward
            if (
                not turn.done
                and turn.observation is not None
                and self._episodes.transcripts[e].turns < self.env.max_turns
            ):
                observations[e] = turn.observation
        if not observations:
            return None
        self._turn += 1
        return self._episodes.request(observations, self._turn)

    def _score(self, step: int, env_rewards: list[float] | None, success: list | None):
        """3. Rewards per function (TRL signature; an env's or game's reward is the ``env_reward`` column),
        total, and correctness (the game's success, else the ``answer`` column).

        Every function gets what TRL's ``GRPOTrainer._calculate_rewards`` passes: ``prompts``,
        ``completions``, ``completion_ids``, each dataset column (one value per completion),
        ``trainer_state`` (``global_step`` = steps done, ``max_steps``), ``log_extra(column, values)``
        and ``log_metric(name, value)`` (kept in the ``reward_log`` column of ``samples`` and ``steps``)."""
        from transformers import TrainerState

        from rewards.scoring import score

        eps = self._episodes
        rows = [eps.rows[t.row] for t in eps.transcripts]
        prompts = [t.prompt for t in eps.transcripts]
        completions = eps.completions()
        columns: dict[str, Any] = {
            k: [row.get(k) for row in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")
        }
        env_rewards = env_rewards if env_rewards is not None else self._env_rewards
        if env_rewards is not None:
            columns["env_reward"] = list(env_rewards)
        self._logged = ({}, {})  # log_metric: name -> values; log_extra: column -> one value per completion
        columns.update(
            completion_ids=[list(t.ids) for t in eps.transcripts],
            trainer_state=TrainerState(global_step=step - 1, max_steps=self.plan.steps),
            log_metric=lambda name, value: self._logged[0].setdefault(str(name), []).append(float(value)),
            log_extra=lambda column, values: self._logged[1].__setitem__(str(column), list(values)),
        )
        scored = score(self.reward_fns, prompts, completions, columns)
        correct = [math.nan] * len(prompts)
        if success is not None:
            correct = [math.nan if c is None else float(c) for c in success]
        elif "answer" in columns:
            correct = [math.nan if c is None else c for c in self.is_correct(prompts, completions, **columns)]
        return scored, correct

    def prepare(self, step: int, env_rewards: list[float] | None = None, success: list | None = None) -> TrainJob:
        """Steps 3-4 on this step's episodes: rewards, group-relative advantages, the packed batch the
        trainer service takes (with this group's optimizer settings). A game agent gets its rewards and
        the game's success per episode from the coordinator."""
        import torch

        from engine.trainer.fused import GroupBatch, LossSettings
        from engine.trainer.grpo import group_advantages
        from engine.trainer.service import TrainJob
        from engine.trainer.slots import SlotHParams

        hp, G = self.hp, self._episodes.n
        group_fault(self.name, step)
        # 3. rewards (one column per function) and correctness
        scored, correct = self._score(step, env_rewards, success)
        rewards = torch.tensor(scored.masked_total, dtype=torch.float32)  # [B]; NaN: unscorable
        # 4. group-relative advantages (over the episodes of one row; an unscorable one gets 0)
        advantages = group_advantages(rewards, G, hp.scale_rewards)  # [B]
        packed = self._pack()  # ids [B, P+L], loss mask [B, L], sampler log-probs [B, L]
        max_len = hp.max_completion_length * max(t.turns for t in self._episodes.transcripts)
        self._scored = (scored, correct, rewards, advantages, packed.mask, packed.old_logp)
        batch = GroupBatch.from_pack(self.name, packed, advantages, LossSettings.from_grpo(hp, max_len))
        return TrainJob(batch, SlotHParams.from_grpo(hp))

    def finish(self, step: int, result: GroupResult, train_s: float, publish_s: float) -> StepOutput:
        """Step 8 after the trainer's update (steps 5-7): this group's metrics row and sample rows."""
        from engine.trainer.grpo import masked_mean

        scored, correct, rewards, advantages, mask, sampler_logp = self._scored
        hp, eps = self.hp, self._episodes
        served = min(t.adapter_version for t in eps.transcripts)
        lengths = [int(sum(t.mask)) for t in eps.transcripts]
        turns = [t.turns for t in eps.transcripts]
        mismatch = math.nan
        if result.logp is not None and hp.num_iterations == 1:
            mismatch = masked_mean((result.logp - sampler_logp).abs(), mask)
        scorable = rewards[~rewards.isnan()]  # (TRL's reward metrics leave unscorable rows out)
        metrics = {
            "step": step,
            "group": self.name,
            "cohort": self.plan.cohort,
            "adapter_version": served,
            "reward": float(scorable.mean()) if len(scorable) else math.nan,
            "reward_std": float(scorable.std()) if len(scorable) > 1 else math.nan,
            **{f"reward/{k}": _nanmean(v) for k, v in scored.per_function.items()},
            "reward_failures": len(scored.failures),
            "accuracy": _nanmean(correct),
            "advantage_abs": float(advantages.abs().mean()),
            "loss": result.loss,
            "kl": result.kl,
            "clip_ratio": result.clip_ratio,
            "logprob_mismatch": mismatch,
            "is_weight_mean": result.is_weight_mean,
            "grad_norm": result.grad_norm,
            "lr": hp.lr,
            "temperature": hp.temperature,
            "beta": hp.beta,
            "prompts_per_step": len(eps.rows),
            "completion_len_mean": sum(lengths) / len(lengths),
            "completion_len_max": max(lengths),
            "turns_mean": sum(turns) / len(turns),
            "truncated_frac": sum(t.finish_reason == "length" for t in eps.transcripts) / len(lengths),
            "time/rollout_s": eps.rollout_seconds,
            "time/train_s": train_s,
            "time/publish_s": publish_s,
            "reward_log": json.dumps({k: sum(v) / len(v) for k, v in self._logged[0].items()}),
        }
        samples = [
            {
                **self._episode_row(step, i, t, scored, correct),
                "advantage": float(advantages[i]),
                "finish_reason": t.finish_reason,
                "completion_tokens": lengths[i],
                "reward_log": json.dumps(
                    {k: v[i] if i < len(v) else None for k, v in self._logged[1].items()}, default=str
                ),
            }
            for i, t in enumerate(eps.transcripts)
        ]
        return StepOutput(metrics, samples, scored.failures, result.reason if result.skipped else None)

    def _episode_row(self, step: int, i: int, t, scored: RewardResult, correct: list[float]) -> dict[str, Any]:
        """What a ``samples/`` and an ``evals/`` row of episode ``i`` (transcript ``t``) share."""
        n = self._episodes.n
        return {
            "step": step,
            "group": self.name,
            "prompt_index": i // n,
            "sample_index": i % n,
            **self._sample_text(t),
            "answer": str(self._episodes.rows[t.row].get("answer")),
            "reward": scored.masked_total[i],  # NaN (null) where no reward function scored the sample
            **{f"reward/{k}": v[i] for k, v in scored.per_function.items()},
            "correct": correct[i],
            "turns": t.turns,
            "adapter_version": t.adapter_version,
        }

    def _sample_text(self, t) -> dict:
        """Prompt and completion as text; a multi-turn completion keeps its turn markers."""
        decode = self.tokenizer.decode
        completion = t.replies[0] if t.turns == 1 else decode(t.ids, skip_special_tokens=False)
        return {"prompt": decode(t.prompt_ids, skip_special_tokens=False), "completion": completion}

    def _pack(self) -> Packed:
        """First prompts left-padded to P, the rest (model turns + observations) right-padded to L:
        ids [B, P+L]; loss mask [B, L] (1 on sampled tokens); sampler log-probs [B, L]."""
        import torch

        from engine.trainer.fused import Packed

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
        return Packed(torch.tensor(ids), torch.tensor(attn), P, torch.tensor(mask), torch.tensor(old))

    # --- held-out evaluation ----------------------------------------------------------------------

    def evaluate(self, step: int, env_rewards: list[float] | None = None, success: list | None = None) -> list[dict]:
        """One row per held-out episode: reward per function, correctness, format, token ids and log-probs."""
        eps = self._episodes
        scored, correct = self._score(step, env_rewards, success)
        formatted = self.is_formatted(None, [completion_text(c) for c in eps.completions()])
        return [
            {
                **self._episode_row(step, i, t, scored, correct),
                "format_ok": formatted[i],
                "prompt_ids": t.prompt_ids,
                "completion_ids": t.ids,
                "logprobs": t.logprobs,
                "completion_mask": t.mask,
            }
            for i, t in enumerate(eps.transcripts)
        ]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan
