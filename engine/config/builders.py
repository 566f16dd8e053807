"""Builders: turn the validated config into plain per-group plans, and plans into envs and rewards.

Components (``groups/``, ``envs/``, ``rewards/``) never see ``RunConfig``: a ``GroupPlan`` holds one group's
part of it as the config's validated models (env, rewards, GRPO, LoRA, tags: they pickle across Ray, and a
typo in a field name fails in mypy, not in an actor at step N).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.schema import (
    AnyEnvConfig,
    DatasetEnvConfig,
    GameEnvConfig,
    GRPOConfig,
    LoraConfig,
    RewardSpec,
    RunConfig,
    TagFormat,
)


@dataclass
class GroupPlan:
    """Everything one group actor is built from."""

    name: str
    cohort: str
    seed: int
    env: AnyEnvConfig  # the env (a game agent's: its role and game instance)
    rewards: list[RewardSpec]  # file paths resolved against the config's folder
    tags: TagFormat  # the answer format: reasoning and solution tags
    grpo: GRPOConfig  # the group's GRPO settings as configured (GroupActor.hp starts as a copy)
    lora: LoraConfig
    extra_sys_path: list[str] = field(default_factory=list)
    steps: int = 0  # the run's steps (reward functions see it as TRL's trainer_state.max_steps)
    eval_seed: int | None = None  # the cohort's held-out set (shared by its replicas); None: seed


def group_plans(cfg: RunConfig, config_dir: Path) -> list[GroupPlan]:
    """Expand ``num_groups`` replicas; resolve relative dataset and reward-file paths against ``config_dir``."""
    plans = []
    for index, spec in enumerate(cfg.groups):
        base_seed = spec.seed if spec.seed is not None else cfg.seed + 1000 * index
        env: AnyEnvConfig = spec.env.model_copy()
        if isinstance(env, DatasetEnvConfig):
            path = Path(env.path).expanduser()
            env = env.model_copy(update={"path": str(path if path.is_absolute() else (config_dir / path))})
        rewards = [_resolve_reward_path(r, config_dir) for r in spec.rewards]
        for k in range(spec.num_groups):
            name = spec.name if spec.num_groups == 1 else f"{spec.name}-{k}"
            if isinstance(spec.env, GameEnvConfig):  # replica k plays game instance k
                game = spec.env.game or spec.env.type
                env = spec.env.model_copy(update={"game": game if spec.num_groups == 1 else f"{game}#{k}"})
            plans.append(
                GroupPlan(
                    name=name,
                    cohort=spec.cohort or spec.name,
                    seed=base_seed + k,
                    env=env,
                    rewards=rewards,
                    tags=spec.format.model_copy(),
                    grpo=spec.grpo.model_copy(),
                    lora=spec.lora.model_copy(),
                    extra_sys_path=[str(Path.cwd()), str(config_dir)],
                    steps=cfg.steps,
                    eval_seed=base_seed,
                )
            )
    names = [p.name for p in plans]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"groups: replicated names clash: {', '.join(clash)}")
    return plans


def _resolve_reward_path(spec: RewardSpec, config_dir: Path) -> RewardSpec:
    module, sep, fn = spec.name.rpartition(":")
    if sep and module.endswith(".py") and not Path(module).is_absolute():
        candidate = config_dir / module
        if candidate.is_file() and not Path(module).is_file():
            return spec.model_copy(update={"name": f"{candidate}:{fn}"})
    return spec.model_copy()


def build_env(env: AnyEnvConfig, seed: int, tags: TagFormat, eval_seed: int | None = None):
    """The env object of a plan; its held-out set is drawn from ``eval_seed`` (the cohort's), else ``seed``."""
    built = _build_env(env.model_dump(), seed, tags, eval_seed)
    built.eval_seed = eval_seed
    return built


def _build_env(env: dict[str, Any], seed: int, tags: TagFormat, eval_seed: int | None):
    kwargs = {k: v for k, v in env.items() if k != "type"}
    tags_kw: dict[str, Any] = tags.model_dump()  # the envs' tag keyword arguments
    if env["type"] == "arithmetic":
        from envs.arithmetic import ArithmeticEnv

        return ArithmeticEnv(seed=seed, **kwargs, **tags_kw)
    if env["type"] in ("medical", "legal", "financial"):
        from envs.domains import make_domain_env

        return make_domain_env(env["type"], seed=seed, **kwargs, **tags_kw)
    if env["type"] == "code":
        from envs.code_task import CodeTaskEnv

        return CodeTaskEnv(seed=seed, **kwargs, **tags_kw)
    if env["type"] == "dataset":
        from envs.dataset import DatasetEnv

        return DatasetEnv(seed=seed, eval_seed=eval_seed, **kwargs)
    if env["type"] == "guess":
        from envs.multiturn import GuessNumberEnv

        return GuessNumberEnv(seed=seed, **kwargs, **tags_kw)
    if "role" in env:
        raise ValueError(f"env.type: {env['type']!r} is a game; its groups are played by the coordinator (build_games)")
    raise ValueError(f"env.type: unknown env {env['type']!r}")


def build_game(env: GameEnvConfig, seed: int, tags: TagFormat):
    """The game object of a game agent's plan (the same for every agent of the game)."""
    kwargs = env.model_dump(exclude={"type", "role", "game"})
    tags_kw: dict[str, Any] = tags.model_dump()  # the envs' tag keyword arguments
    if env.type == "signaling":
        from envs.signaling import SignalingGame

        return SignalingGame(seed=seed, **kwargs, **tags_kw)
    if env.type == "negotiation":
        from envs.negotiation import NegotiationGame

        return NegotiationGame(seed=seed, **kwargs, **tags_kw)
    raise ValueError(f"env.type: {env.type!r} is not a game")


def build_games(plans: list[GroupPlan]) -> tuple[dict[str, Any], dict[str, int]]:
    """``GameEpisodes`` per game instance (agents by role, ``group_size`` episodes per row) and its rows
    per step; the game's seed and batch shape are its first agent's (validated equal across agents)."""
    from envs.game import GameEpisodes

    agents: dict[str, list[tuple[GroupPlan, GameEnvConfig]]] = {}
    for p in plans:
        if isinstance(p.env, GameEnvConfig):
            agents.setdefault(p.env.game or p.env.type, []).append((p, p.env))
    games, prompts = {}, {}
    for name, members in agents.items():
        first, env = members[0]
        game = build_game(env, first.seed, first.tags)
        games[name] = GameEpisodes(game, {e.role: p.name for p, e in members}, first.grpo.group_size)
        prompts[name] = first.grpo.prompts_per_step
    return games, prompts


def build_rewards(
    rewards: list[RewardSpec], tags: TagFormat, search: list[str] | None = None
) -> list[tuple[str, Callable, float]]:
    """``(unique_name, fn, weight)`` per configured reward; repeated names get ``_2``, ``_3``. ``search``:
    the user's folders for ``module:function`` rewards (a plan's ``extra_sys_path``), searched first."""
    from rewards.registry import load_reward

    out: list[tuple[str, Callable, float]] = []
    seen: dict[str, int] = {}
    for spec in rewards:
        fn = load_reward(spec.name, spec.params, defaults=tags.model_dump(), search=search or ())
        base = getattr(fn, "__name__", None) or spec.name.rpartition(":")[2]
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}_{seen[base]}", fn, spec.weight))
    return out


def accuracy_fn(tags: TagFormat) -> Callable:
    """Correctness behind the ``accuracy`` metric: the text between the group's solution tags equals
    the ``answer`` column, numerically where both parse as numbers, else as stripped strings."""
    import math

    from rewards.text import completion_text, extract_answer, parse_number

    start, end = tags.solution_start, tags.solution_end

    def correct(prompts, completions, answer, **_) -> list[float | None]:
        out: list[float | None] = []
        for completion, truth in zip(completions, answer):
            if truth is None:
                out.append(None)
                continue
            got = extract_answer(completion_text(completion), start, end)
            a, b = parse_number(got), parse_number(str(truth))
            same = (
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
                if a is not None and b is not None
                else got == str(truth).strip()
            )
            out.append(float(same))
        return out

    return correct
