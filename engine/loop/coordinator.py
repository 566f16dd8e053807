"""The coordinator: the training loop of the whole population, written out in the open.

    plans = group_plans(cfg)                   # config -> plain per-group plans
    preflight(plans)                           # envs and rewards build here first: bad input fails before any write
    population = Population(plans)             # per device: rollout + trainer services (the base once each); one GroupActor per group
    for step in start+1 .. steps:
        outs, events = population.step(step)   # per device: its groups' rollouts in one batch, one fused GRPO update, one publish
        evaluate every eval_interval steps     # held-out reward / accuracy / format rate
        rebalance every rebalance_frequency    # groups/rebalance.py: exploit_explore | reallocate | none
        write steps/ samples/ evals/ events/ parts, then checkpoint
    adapters, leaderboard

``run`` starts a fresh run; ``resume`` continues a run directory after its last checkpoint and
produces the same rows an uninterrupted run would have (timings aside).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from engine.config.builders import GroupPlan, build_env, build_games, build_rewards, group_plans
from engine.config.faults import ENV as FAULTS_ENV
from engine.config.loading import ConfigError, dump_config, load_config
from engine.config.schema import DatasetEnvConfig, GameEnvConfig, RunConfig
from engine.results.checkpoint import commit_checkpoint, discard_after, latest_checkpoint
from engine.results.scores import group_scores, leaderboard
from engine.results.tables import RunWriter, event_row, read_table, reward_names, write_atomic_bytes
from groups.actor import StepOutput
from groups.rebalance import STRATEGIES, relative_gaps


@dataclass
class RunSummary:
    run_dir: Path
    leaderboard: pd.DataFrame
    seconds: float
    failed_groups: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    """Why each failed group failed (its ``failed`` event)."""


def preflight(plans: list[GroupPlan]) -> None:
    """Build every env and reward function in this process, so bad input fails before anything is written."""
    from envs.dataset import DatasetError
    from rewards.registry import RewardLoadError

    try:
        build_games(plans)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"games: {e}") from None
    for plan in plans:
        if isinstance(plan.env, GameEnvConfig):  # a game agent: its prompts come from the game
            rows = []
        else:
            try:
                env = build_env(plan.env, plan.seed, plan.tags, plan.eval_seed)
                rows = env.batch(0, 1)
            except (DatasetError, ValueError, KeyError) as e:
                raise ConfigError(f"group {plan.name} (env): {e}") from None
        try:
            build_rewards(plan.rewards, plan.tags, plan.extra_sys_path)  # found as the group actors find them
        except RewardLoadError as e:
            raise ConfigError(f"group {plan.name} (rewards): {e}") from None
        if rows and not isinstance(rows[0].get("prompt"), (str, list)):
            raise ConfigError(f"group {plan.name} (env): rows need a 'prompt' string or message list")


def sandbox_events(plans: list[GroupPlan], log) -> list[dict]:
    """Which sandbox runs each ``code_exec`` group's code: an ``events`` row per group (kind ``sandbox``);
    a weaker one than the kernel's (accepted with ``weaker_sandbox: true``) is said once on the console."""
    uses = [p.name for p in plans if any(r.name == "code_exec" for r in p.rewards)]
    if not uses:
        return []
    from rewards.kernel_sandbox import features

    have = features()
    if have["missing"]:
        detail = (
            "weaker sandbox (Python guards"
            + (", namespaces" if have["namespaces"] else "")
            + f"): missing {'; '.join(have['missing'])}"
        )
        log(f"warning: code_exec runs model-written code in a {detail}")
    else:
        detail = f"kernel sandbox: namespaces, Landlock ABI {have['landlock']}, seccomp"
    return [event_row(0, g, "sandbox", detail) for g in uses]


def _check_first_rewards(outs: list[StepOutput]) -> None:
    """A reward function that raised for every group that calls it in step 1 is a configuration error
    (a wrong signature, a missing column, a missing package), not a run's bad luck: ``ConfigError``. (One
    that returned an infinite value failed on its data: recorded, as in later steps.)"""
    users: dict[str, list[str]] = {}
    failed: dict[str, list[tuple[str, str]]] = {}
    for o in outs:
        group = o.metrics["group"]
        for key in o.metrics:
            if key.startswith("reward/"):
                users.setdefault(key.removeprefix("reward/"), []).append(group)
        for fn, err in o.failures.items():
            if not err.startswith("NonFiniteReward"):  # an inf on some sample is the data's, not the config's
                failed.setdefault(fn, []).append((group, err))
    broken = [fn for fn, where in failed.items() if len(where) == len(users.get(fn, []))]
    if broken:
        lines = [
            f"reward function {fn!r} failed on every call of step 1 (group {failed[fn][0][0]}: {failed[fn][0][1]})"
            for fn in broken
        ]
        raise ConfigError(
            "; ".join(lines) + "; fix it (TRL's signature: fn(prompts, completions, **kwargs) -> "
            "list of floats) and run again"
        )


def default_run_dir(cfg: RunConfig, config_name: str) -> Path:
    name = cfg.run_name or f"{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output_dir) / name


def resolve_backend(backend: str) -> str:
    """``auto``: vllm where CUDA is available and vllm is installed, else hf."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def resolve_training(training: dict) -> dict:
    """Trainer device, dtype, prompt sharing, activation checkpointing and micro-batch size with ``auto``
    resolved: cuda + bfloat16 where CUDA is available; on cuda activation checkpointing and micro-batches
    of 32768 tokens (several groups per pass, the memory beside vLLM bounded whatever the number of
    groups); on the cpu prompts shared and one pass."""
    import torch

    device = training["device"] if training["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = training["dtype"] if training["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    share = device == "cpu" if training["share_prompts"] == "auto" else bool(training["share_prompts"])
    ckpt = (
        device == "cuda" if training["gradient_checkpointing"] == "auto" else bool(training["gradient_checkpointing"])
    )
    share = share and not ckpt
    tokens = training["micro_batch_tokens"]
    tokens = (32768 if device == "cuda" else 0) if tokens == "auto" else tokens
    return {
        **training,
        "device": device,
        "dtype": dtype,
        "share_prompts": share,
        "micro_batch_tokens": tokens,
        "gradient_checkpointing": ckpt,
    }


WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
# the driver's settings of how torch computes reach every actor (on a cluster too), so a user or a
# test can pin the CPU kernels and threads the model runs with
PASSED_ENV = (
    "ATEN_CPU_CAPABILITY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "LORAPOP_CACHE",
    FAULTS_ENV,
)


class RunStopped(Exception):
    """The run was stopped from outside (SIGTERM, e.g. a scheduler's stop); raised in the main thread."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _stop_on_sigterm():
    """SIGTERM ends the run as Ctrl-C does (an exception unwinding through the coordinator, Ray shut
    down), not through Ray's driver handler (``sys.exit`` at any point, native aborts on the way out).
    Returns the handler it replaced (None off the main thread)."""
    import signal
    import threading

    def stop(signum, frame):
        raise RunStopped("SIGTERM")

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, stop)
    return None


def _devices(cfg: RunConfig, device_type: str, groups: int) -> int:
    """``ray.devices`` resolved against what the Ray cluster has (``ConfigError`` when it has too few)."""
    from engine.loop.devices import resolve_devices

    try:
        n = resolve_devices(cfg.ray.devices, device_type, groups)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    share = cfg.rollout.num_gpus + cfg.training.num_gpus
    if n > 1 and device_type == "cuda" and cfg.backend != "hf" and share > 1:
        raise ConfigError(
            f"rollout.num_gpus + training.num_gpus = {share:g}: a device's two services share its one GPU "
            f"(at most 1 together)"
        )
    return n


def _job_env_vars() -> dict:
    """The env_vars of the runtime environment of the Ray job this driver runs in ({} outside a job)."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return dict(job.get("runtime_env", {}).get("env_vars", {}) or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start (or connect to) Ray; returns True when this call started it. Without ``address``, a Ray job's
    driver (``ray job submit``, which sets ``RAY_ADDRESS``) joins the job's cluster."""
    import ray

    if ray.is_initialized():
        return False
    env = {**WORKER_ENV, **{k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}}  # fault injection (tests) too
    for k in _job_env_vars():  # a Ray job's own env_vars win (Ray refuses to merge a variable set twice)
        env.pop(k, None)
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs["include_dashboard"] = False
        kwargs["address"] = "local"  # a new local instance, never a `ray start` cluster that happens to run here
        # the embedded cluster is lorapop's own: Ray's notice that it turned token auth on is not the user's business
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def _prepare(cfg: RunConfig, config_dir: Path, log) -> tuple[list[GroupPlan], str]:
    try:
        plans = group_plans(cfg, config_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    preflight(plans)
    from engine.models.base import resolve_base_model

    try:
        model_path = resolve_base_model(cfg.base_model, cfg.tiny_model.model_dump(), log=log)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_prompt_lengths(plans, model_path)
    return plans, model_path


def check_prompt_lengths(plans: list[GroupPlan], model_path: str) -> None:
    """A dataset group none of whose training prompts fits ``grpo.max_prompt_length`` tokens (the group
    actor drops over-long rows, never cuts them) is a configuration error, found before the run starts."""
    from engine.models.base import load_tokenizer, prompt_ids

    datasets = [(p, p.env) for p in plans if isinstance(p.env, DatasetEnvConfig)]
    if not datasets:
        return
    tokenizer = load_tokenizer(model_path)
    shortest: dict[str, int] = {}  # dataset path -> its shortest training prompt, in tokens
    for plan, dataset in datasets:
        path = dataset.path
        if path not in shortest:
            env = build_env(plan.env, plan.seed, plan.tags, plan.eval_seed)
            shortest[path] = min(len(prompt_ids(tokenizer, row["prompt"])) for row in env.batch(0, len(env)))
        limit = plan.grpo.max_prompt_length
        if shortest[path] > limit:
            raise ConfigError(
                f"group {plan.name} (env): every prompt of {path} is longer than grpo.max_prompt_length "
                f"= {limit} tokens (the shortest has {shortest[path]}); raise max_prompt_length or "
                f"shorten the prompts"
            )


def run(
    cfg: RunConfig,
    config_dir: Path,
    run_dir: Path,
    on_step: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Train the population described by ``cfg``; results go to ``run_dir`` (must not exist)."""
    t_start = time.time()
    plans, model_path = _prepare(cfg, config_dir, log)
    if run_dir.exists():
        raise ConfigError(
            f"{run_dir}: run directory already exists; choose another --run-dir or run_name, or --resume it"
        )
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and not run_dir.is_absolute():
        raise ConfigError(
            f"{run_dir}: inside a Ray job the working directory is a temporary copy; give storage_path (or "
            f"--run-dir) an absolute path every node of the cluster reaches"
        )
    blocking = next((p for p in run_dir.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{run_dir}: cannot be a run directory: {blocking} is a file")
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot create the run directory: {e.strerror or e}") from None
    write_atomic_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    # the base each adapter goes on: as configured (builtin:tiny, a hub name) and where this machine has it
    write_atomic_bytes(
        run_dir / "run.json",
        json.dumps(
            {"config_dir": str(config_dir), "base_model": cfg.base_model, "base_model_path": model_path}
        ).encode(),
    )
    try:
        return _train(cfg, plans, model_path, run_dir, 0, {}, on_step, log, t_start)
    except ConfigError:  # found once the run had started (a reward failing in step 1): nothing is kept
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resume(
    run_dir: Path, on_step: Callable[[dict], None] | None = None, log: Callable[[str], None] = print
) -> RunSummary:
    """Continue ``run_dir`` after its last checkpoint; later part files are discarded and redone."""
    t_start = time.time()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no config.yaml)")
    cfg, _ = load_config(run_dir / "config.yaml")
    try:
        config_dir = Path(json.loads((run_dir / "run.json").read_text())["config_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{run_dir}: not a complete lorapop run directory (no readable run.json)") from None
    try:
        found = latest_checkpoint(run_dir)
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{run_dir}: its checkpoints/LATEST names no readable checkpoint") from None
    step, state = (found[0], found[2]) if found else (0, {})
    if step >= cfg.steps and (run_dir / "leaderboard.parquet").is_file():
        log(f"{run_dir}: already complete ({cfg.steps} steps); nothing to resume")
        return RunSummary(
            run_dir=run_dir,
            leaderboard=pd.read_parquet(run_dir / "leaderboard.parquet"),
            seconds=time.time() - t_start,
            failed_groups=list(state.get("failed", [])),
        )
    plans, model_path = _prepare(cfg, config_dir, log)
    removed = discard_after(run_dir, step)
    log(f"resuming {run_dir} after step {step} ({len(removed)} later files discarded)")
    return _train(cfg, plans, model_path, run_dir, step, state, on_step, log, t_start)


def _train(
    cfg: RunConfig,
    plans: list[GroupPlan],
    model_path: str,
    run_dir: Path,
    start: int,
    state: dict,
    on_step,
    log,
    t_start: float,
) -> RunSummary:
    from engine.loop.population import Population

    pop_cfg = cfg.population
    writer = RunWriter(run_dir, reward_names(plans))  # one schema per table for the whole run, resumes too
    writer.create_tables()  # every table readable from the start, even one never written to
    cohorts = {p.name: p.cohort for p in plans}
    history = read_table(run_dir, "steps").to_dict("records")
    evals = read_table(run_dir, "evals").to_dict("records")
    started = _init_ray(cfg.ray.address, cfg.ray.num_cpus)
    previous_sigterm = _stop_on_sigterm()
    try:
        training = resolve_training(cfg.training.model_dump())
        devices = _devices(cfg, training["device"], len(plans))
        population = Population(
            plans,
            model_path,
            run_dir,
            pop_cfg.max_restarts,
            log,
            resolve_backend(cfg.backend),
            cfg.rollout.model_dump(),
            training,
            cfg.ray.torch_threads,
            devices,
            cfg.ray.placement_strategy,
        )
        population.failed = list(state.get("failed", []))
        population.restarts.update(state.get("restarts", {}))
        # start-up events are step 0
        writer.write_part("events", population.start(start or None) + sandbox_events(plans, log), 0)
        pending: dict | None = None  # coordinator state of the checkpoint being written
        silent = NoSignal(log)  # groups whose every advantage stays 0: said once, and recorded
        silent.replay(history)  # (a resumed run carries on the streaks of the steps it keeps)
        for step in range(start + 1, cfg.steps + 1):
            # 1. every live group's GRPO step (rollouts batched across groups), while the last
            # checkpoint's files are written; it counts (LATEST) once they are complete
            outs, events = population.step(step)
            _commit_written(population, pending, run_dir, pop_cfg.keep_checkpoints)
            pending = None
            metrics = [o.metrics for o in outs]
            for m in metrics:  # the population's phases (begin, generate, observe, prepare, finish, step)
                m.update({f"time/{k}_s": v for k, v in population.phases.items() if f"time/{k}_s" not in m})
            samples = [
                s for o in outs for s in (o.samples if cfg.samples_per_step < 0 else o.samples[: cfg.samples_per_step])
            ]
            if step == 1:
                _check_first_rewards(outs)
            events += [
                event_row(step, o.metrics["group"], "reward_failure", f"{fn}: {err}")
                for o in outs
                for fn, err in o.failures.items()
            ]
            events += [event_row(step, o.metrics["group"], "update_skipped", o.skipped) for o in outs if o.skipped]
            events += silent.observe(step, metrics)
            history.extend(metrics)
            # 2. held-out evaluation
            eval_rows = []
            if cfg.eval_prompts > 0 and (
                step == cfg.steps or (pop_cfg.eval_interval and step % pop_cfg.eval_interval == 0)
            ):
                eval_rows = population.evaluate(step, cfg.eval_prompts, pop_cfg.eval_temperature, pop_cfg.eval_samples)
                evals.extend(eval_rows)
            # 3. rebalancing
            if pop_cfg.strategy != "none" and step % pop_cfg.rebalance_frequency == 0 and step < cfg.steps:
                events += _rebalance(population, step, cfg, cohorts, history, evals)
            # 4. results, then the checkpoint that resume starts from
            writer.write_part("steps", metrics, step)
            writer.write_part("samples", samples, step)
            writer.write_part("evals", eval_rows, step)
            writer.write_part("events", events, step)
            if step % pop_cfg.checkpoint_interval == 0 or step == cfg.steps:
                population.save_checkpoints(step)
                pending = {"step": step, "failed": list(population.failed), "restarts": dict(population.restarts)}
            for m in metrics:
                if on_step:
                    on_step(m)
            if not population.live:  # nothing left to train: the run ends here, its leaderboard still written
                log(f"every group has failed; the run ends after step {step}")
                break
        _commit_written(population, pending, run_dir, pop_cfg.keep_checkpoints)
        adapter_dirs = population.save_adapters()
        board = leaderboard(
            pd.DataFrame(history),
            pd.DataFrame(evals),
            cohorts,
            adapter_dirs,
            population.failed,
            pop_cfg.score_metric,
            pop_cfg.score_window,
        )
        board["base_model"], board["base_model_path"] = cfg.base_model, model_path  # what each adapter goes on
        writer.write_leaderboard(board)
    finally:
        if started:
            import ray

            ray.shutdown()
        if previous_sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, previous_sigterm)
    events_table = read_table(run_dir, "events")
    failed = events_table[events_table["kind"] == "failed"] if not events_table.empty else events_table
    reasons = dict(zip(failed.get("group", []), failed.get("detail", [])))
    return RunSummary(
        run_dir=run_dir,
        leaderboard=board,
        seconds=time.time() - t_start,
        failed_groups=population.failed,
        failures={g: reasons.get(g, "") for g in population.failed},
    )


class NoSignal:
    """Spots groups that learn nothing because every advantage is 0 (each prompt's samples all got the
    same reward: e.g. a system prompt asking for tags the model never writes) for ``patience`` steps in
    a row; says so once per group on the console and in an ``events`` row (kind ``no_signal``)."""

    def __init__(self, log: Callable[[str], None], patience: int = 3):
        self.log, self.patience = log, patience
        self.streak: dict[str, int] = {}
        self.said: set[str] = set()

    def replay(self, history: list[dict]) -> None:
        """The state after ``history`` (metrics rows of earlier steps), nothing said again."""
        for m in sorted(history, key=lambda m: m["step"]):
            self._count(m)

    def _count(self, m: dict) -> bool:
        """Count one metrics row; True when its group has just reached ``patience`` for the first time."""
        g = m["group"]
        self.streak[g] = self.streak.get(g, 0) + 1 if m.get("advantage_abs") == 0 else 0
        if self.streak[g] == self.patience and g not in self.said:
            self.said.add(g)
            return True
        return False

    def observe(self, step: int, metrics: list[dict]) -> list[dict]:
        events = []
        for m in metrics:
            g = m["group"]
            if self._count(m):
                fns = ", ".join(k.removeprefix("reward/") for k in m if k.startswith("reward/")) or "none"
                why = (
                    f"no reward function ({fns}) scored any sample"
                    if m["reward"] != m["reward"]
                    else f"each prompt's samples got the same reward, {m['reward']:.3g}, from reward functions {fns}"
                )
                msg = (
                    f"group {g} learns nothing: every advantage has been 0 for {self.patience} steps ({why}); check "
                    f"that the prompts ask for what the rewards score"
                )
                self.log(f"warning: {msg}")
                events.append(event_row(step, g, "no_signal", msg, value=float(self.patience)))
        return events


def _commit_written(population, pending: dict | None, run_dir: Path, keep: int) -> None:
    """Commit the checkpoint being written (``pending``: its coordinator state) once its files are
    complete; a checkpoint lost with a dead trainer is not committed (the next one will be)."""
    if pending is not None:
        population.checkpoint_written()  # (recovery may have waited for it already)
        if population.checkpoint_step == pending["step"]:
            commit_checkpoint(run_dir, pending["step"], pending, keep)


def _rebalance(
    population, step: int, cfg: RunConfig, cohorts: dict[str, str], history: list[dict], evals: list[dict]
) -> list[dict]:
    """Score, pick the strategy's decisions, apply them; one event row per decision."""
    pop_cfg = cfg.population
    live = {g: c for g, c in cohorts.items() if g in population.live}
    scores = group_scores(
        pd.DataFrame(history), pd.DataFrame(evals), list(live), pop_cfg.score_metric, pop_cfg.score_window
    )
    rng = random.Random(f"rebalance:{cfg.seed}:{step}")
    strategy = STRATEGIES[pop_cfg.strategy]
    decisions = strategy(
        scores,
        live,
        population.hparams(),
        pop_cfg.performance_threshold,
        rng,
        **pop_cfg.model_dump(
            include={
                "quantile_fraction",
                "perturbation_factors",
                "perturb",
                "reallocate_prompts",
                "min_prompts_per_step",
            }
        ),
    )
    events = []
    for d in decisions:
        population.apply(d)
        events.append(
            event_row(
                step,
                d.group,
                "rebalance",
                d.action,
                donor=d.donor,
                gap=d.gap,
                score=d.score,
                donor_score=d.donor_score,
                old=json.dumps(d.old, sort_keys=True),
                new=json.dumps(d.new, sort_keys=True),
            )
        )
    gaps = relative_gaps(scores, live)
    for g in sorted(live):
        if g not in {d.group for d in decisions}:
            events.append(
                event_row(
                    step,
                    g,
                    "score",
                    "within threshold" if not gaps[g][0] > pop_cfg.performance_threshold else "trailing, no action",
                    gap=gaps[g][0],
                    score=scores[g],
                    donor=gaps[g][1],
                    donor_score=scores[gaps[g][1]],
                )
            )
    return events
