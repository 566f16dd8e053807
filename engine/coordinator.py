"""The coordinator: builds the population on Ray, steps every group, and writes the results.

    plans   = group_plans(cfg)                       # config -> plain per-group plans
    preflight(plans)                                 # envs and rewards build here first: bad input fails before any write
    rollout = one actor with the base + one adapter per group
    groups  = one GroupActor per plan
    for step in 1..steps:
        requests = [g.rollout_request(step)]         # all groups
        results  = rollout.generate(requests)        # one batched call
        rows     = [g.learn(step, r)]                # in parallel; each publishes its new adapter
        write steps/ samples/ events/ parts
    held-out eval, adapters, leaderboard
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from engine.builders import GroupPlan, build_env, build_rewards, group_plans
from engine.config import RunConfig
from engine.loading import ConfigError, dump_config
from engine.results import RunWriter, write_atomic_bytes


@dataclass
class RunSummary:
    run_dir: Path
    leaderboard: pd.DataFrame
    seconds: float
    failed_groups: list[str] = field(default_factory=list)


def preflight(plans: list[GroupPlan]) -> None:
    """Build every env and reward function in this process, so bad input fails before anything is written."""
    from envs.dataset import DatasetError
    from rewards.registry import RewardLoadError

    for i, plan in enumerate(plans):
        try:
            env = build_env(plan.env, plan.seed, plan.tags)
            rows = env.batch(0, 1)
        except (DatasetError, ValueError, KeyError) as e:
            raise ConfigError(f"group {plan.name} (env): {e}") from None
        try:
            build_rewards(plan.rewards, plan.tags)
        except RewardLoadError as e:
            raise ConfigError(f"group {plan.name} (rewards): {e}") from None
        if rows and not isinstance(rows[0].get("prompt"), (str, list)):
            raise ConfigError(f"group {plan.name} (env): rows need a 'prompt' string or message list")


def default_run_dir(cfg: RunConfig, config_name: str) -> Path:
    name = cfg.run_name or f"{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output_dir) / name


def resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    try:
        import torch

        import vllm  # noqa: F401

        return "vllm" if torch.cuda.is_available() else "hf"
    except ImportError:
        return "hf"


WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start (or connect to) Ray; returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "runtime_env": {"env_vars": dict(WORKER_ENV)}}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def run(cfg: RunConfig, config_dir: Path, run_dir: Path, on_step: Callable[[dict], None] | None = None,
        log: Callable[[str], None] = print) -> RunSummary:
    """Train the population described by ``cfg``; results go to ``run_dir`` (must not exist)."""
    t_start = time.time()
    try:
        plans = group_plans(cfg, config_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    preflight(plans)
    if run_dir.exists():
        raise ConfigError(f"{run_dir}: run directory already exists; choose another --run-dir or run_name")
    backend = resolve_backend(cfg.backend)
    if backend != "hf":
        raise NotImplementedError("backend 'vllm' is issue #5 (vLLM multi-LoRA rollout backend); use backend: hf")
    from engine.models import resolve_base_model

    model_path = resolve_base_model(cfg.base_model, cfg.tiny_model.model_dump(), log=log)

    run_dir.mkdir(parents=True)
    write_atomic_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    writer = RunWriter(run_dir)

    import ray

    from groups.actor import GroupActor, default_threads
    from engine.rollout.hf import HFRollout

    started = _init_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        rollout = ray.remote(num_cpus=0)(HFRollout).remote(model_path, {p.name: p.lora for p in plans})
        threads = default_threads(len(plans))
        actors = [ray.remote(num_cpus=0)(GroupActor).remote(p, model_path, rollout, threads) for p in plans]
        ray.get([a.publish.remote() for a in actors])  # version 0 (== base) on the rollout service
        history: list[dict] = []
        for step in range(1, cfg.steps + 1):
            requests = ray.get([a.rollout_request.remote(step) for a in actors])
            t0 = time.perf_counter()
            results = ray.get(rollout.generate.remote(requests))
            generate_s = time.perf_counter() - t0
            outs = ray.get([a.learn.remote(step, r) for a, r in zip(actors, results)])
            metrics = [{**o["metrics"], "time/step_generate_s": generate_s} for o in outs]
            samples = [s for o in outs for s in _subsample(o["samples"], cfg.samples_per_step)]
            events = [{"step": step, "group": o["metrics"]["group"], "kind": "reward_failure", "detail": f"{fn}: {err}"}
                      for o in outs for fn, err in o["failures"].items()]
            writer.write_part("steps", metrics, step)
            writer.write_part("samples", samples, step)
            writer.write_part("events", events, step)
            history.extend(metrics)
            for m in metrics:
                if on_step:
                    on_step(m)
        eval_rows = _evaluate(actors, rollout, cfg.eval_prompts, cfg.steps) if cfg.eval_prompts > 0 else []
        writer.write_part("evals", eval_rows, cfg.steps)
        adapter_dirs = {p.name: str(run_dir / "adapters" / p.name) for p in plans}
        ray.get([a.save_adapter.remote(adapter_dirs[p.name]) for a, p in zip(actors, plans)])
        board = leaderboard(pd.DataFrame(history), pd.DataFrame(eval_rows), adapter_dirs)
        writer.write_leaderboard(board)
    finally:
        if started:
            ray.shutdown()
    return RunSummary(run_dir=run_dir, leaderboard=board, seconds=time.time() - t_start)


def _subsample(samples: list[dict], k: int) -> list[dict]:
    return samples if k < 0 else samples[:k]


def _evaluate(actors: list, rollout, n: int, step: int) -> list[dict]:
    import ray

    requests = ray.get([a.eval_request.remote(n) for a in actors])
    results = ray.get(rollout.generate.remote(requests))
    return [row for rows in ray.get([a.evaluate.remote(step, r) for a, r in zip(actors, results)]) for row in rows]


def leaderboard(steps: pd.DataFrame, evals: pd.DataFrame, adapter_dirs: dict[str, str], window: int = 5) -> pd.DataFrame:
    """One row per group, ranked by score: held-out eval reward where there is one, else the mean
    train reward of the last ``window`` steps."""
    rows = []
    for group, g in steps.groupby("group", sort=False):
        g = g.sort_values("step")
        smooth = g["reward"].rolling(window, min_periods=1).mean()
        e = evals[evals["group"] == group] if len(evals) else evals
        eval_reward = float(e["reward"].mean()) if len(e) else math.nan
        eval_acc = float(e["correct"].mean()) if len(e) else math.nan
        train_score = float(smooth.iloc[-1])
        rows.append({
            "group": group, "cohort": g["cohort"].iloc[0],
            "score": eval_reward if not math.isnan(eval_reward) else train_score,
            "eval_reward": eval_reward, "eval_accuracy": eval_acc,
            "train_reward_first": float(g["reward"].iloc[: min(window, len(g))].mean()),
            "train_reward_last": train_score, "best_step": int(g["step"].iloc[int(smooth.values.argmax())]),
            "steps": int(g["step"].max()), "adapter_path": os.path.abspath(adapter_dirs.get(group, "")),
        })
    board = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board
