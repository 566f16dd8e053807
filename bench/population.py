"""Benchmark: does a population earn its keep against a single adapter given the same samples?

    python bench/population.py --groups 4 --prompts 4 --group-size 8 --steps 30 --seeds 0 1 2 \
        --eval-prompts 32 --lr 2e-3 --model builtin:tiny --out bench/population.json

For each seed, two ``lorapop run``s, each as a user runs it (a fresh ``python -m engine.cli run
CONFIG --run-dir DIR -q`` from the repository root), on the same task, base model, LoRA (r 8,
alpha 16), GRPO settings (lr, max_completion_length 48, temperature 1) and run ``seed``:

1. population: one cohort of K replicas (``num_groups: K``), each ``prompts_per_step: P`` x
   ``group_size: G``, rebalanced by PBT (``strategy: exploit_explore`` every ``rebalance_frequency``
   steps, ``performance_threshold`` 0.1, scored by ``train_reward``, perturbing lr and temperature);
2. single: one group with ``prompts_per_step: K*P``, the same ``group_size: G``, no rebalancing.

The comparison is compute-matched: each step, both runs sample K*P*G completions (K*P prompts x G)
of at most the same length, score them with the same rewards and train on every one of them, so
rollout and training tokens per step are the same; the population spends them on K adapters of P
prompts each, the single adapter on one batch K times larger (less noisy advantages and gradients).
What the population gets in exchange is K independent starts, selection and hyper-parameter search.

Scored by held-out accuracy (the ``correct`` column of ``evals/``, greedy, ``--eval-prompts`` per
group) at the last eval step: the population's best replica (max over K: what a user would keep),
its mean over replicas, and the single adapter. Replica k of a cohort has seed ``seed + k`` (its own
training stream) and is evaluated on the cohort's held-out set, the same prompts as the single
adapter (both are drawn from the run ``seed``); a max over K noisy accuracies is biased upwards (by
about one standard error at K = 4), which is why the mean is reported beside it. Rebalancing decisions are read from ``events/`` (``kind: rebalance``).

Runs are sequential on purpose: this measures accuracy, not speed (bench/e2e.py and
bench/scaling.py do timings), and two runs side by side would only slow each other; the wall
seconds of each run are recorded for scale (the base model is resolved, and built if need be, first).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/ is a folder of scripts, not a package)

ROOT = e2e.ROOT
ARMS = ("population", "single")
DEFAULT_ENV = {"type": "medical", "difficulty": 0}  # "facts in the prompt"
DEFAULT_REWARDS = [{"name": "format_exact", "weight": 1.0}, {"name": "answer_exact", "weight": 1.0}]
TAIL = 40  # lines of a failed run's stderr shown


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _json(kind: type):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"JSON {kind.__name__}"  # argparse names the type in its messages
    return parse


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=_positive, default=4, help="K: replicas of the population")
    ap.add_argument("--prompts", type=_positive, default=4, help="P: prompts per step of each replica (single: K*P)")
    ap.add_argument("--group-size", type=int, default=8, help="G: completions per prompt (>= 2)")
    ap.add_argument("--steps", type=_positive, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds; two runs per seed")
    ap.add_argument("--eval-prompts", type=_positive, default=32, help="E: held-out prompts per group (greedy)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rebalance-frequency", type=_positive, default=5, help="population: PBT every N steps")
    ap.add_argument("--model", default="builtin:tiny", help="builtin:tiny or a local HF directory")
    ap.add_argument(
        "--env",
        type=_json(dict),
        default=DEFAULT_ENV,
        help=f"the task, as a group's env: (default {json.dumps(DEFAULT_ENV)})",
    )
    ap.add_argument(
        "--rewards",
        type=_json(list),
        default=DEFAULT_REWARDS,
        help="reward specs as a group's rewards: (default format_exact + answer_exact)",
    )
    ap.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch CPU threads of each model service (ray.torch_threads); default every core",
    )
    ap.add_argument("--out", default=None, help="write every number as JSON here (default: print only)")
    ap.add_argument("--keep", action="store_true", help="keep the configs and run directories (path printed)")
    ap.add_argument("--dry-run", action="store_true", help="print the two generated configs (first seed) and exit")
    args = ap.parse_args()
    if args.group_size < 2:
        ap.error(f"argument --group-size: must be >= 2 (GRPO compares samples of a prompt), got {args.group_size}")
    if args.lr <= 0:
        ap.error(f"argument --lr: must be > 0, got {args.lr}")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"argument --seeds: repeated seed in {args.seeds}")
    return ap, args


# --- the two configs ------------------------------------------------------------------------------


def configs(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    """``{"population": cfg, "single": cfg}``: the same run but for the cohort shape and the strategy."""

    def run(prompts: int, strategy: str, group: dict) -> dict:
        return {
            "seed": seed,
            "steps": args.steps,
            "base_model": args.model,
            "eval_prompts": args.eval_prompts,
            "grpo": {
                "prompts_per_step": prompts,
                "group_size": args.group_size,
                "max_completion_length": 48,
                "temperature": 1.0,
                "lr": args.lr,
                "beta": 0.0,
            },
            "lora": {"r": 8, "alpha": 16},
            # the same population: block in both (inert with strategy none), so only the strategy differs
            "population": {
                "eval_interval": args.steps,
                "eval_temperature": 0.0,
                "strategy": strategy,
                "rebalance_frequency": args.rebalance_frequency,
                "performance_threshold": 0.1,
                "score_metric": "train_reward",
                "perturb": ["lr", "temperature"],
            },
            **({"ray": {"torch_threads": args.threads}} if args.threads else {}),
            "groups": [{**group, "env": args.env, "rewards": args.rewards}],
        }

    return {
        "population": run(args.prompts, "exploit_explore", {"name": "pop", "num_groups": args.groups}),
        "single": run(args.groups * args.prompts, "none", {"name": "single"}),
    }


def validate(ap: argparse.ArgumentParser, cfgs: dict[str, dict]) -> None:
    """The configs as ``lorapop run`` validates them: a bad --env or --rewards is an argparse error here,
    not a failed run later."""
    from pydantic import ValidationError

    from engine.config.schema import RunConfig

    for arm, cfg in cfgs.items():
        try:
            RunConfig.model_validate(cfg)
        except ValidationError as e:
            errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            ap.error(f"the {arm} config is invalid: {errors}")


# --- one run --------------------------------------------------------------------------------------


def run_one(cfg: dict, where: Path) -> dict:
    """``lorapop run`` of ``cfg`` in a fresh process; its final held-out accuracies, rebalancing and wall time."""
    import pandas as pd
    import yaml

    where.mkdir(parents=True)
    path = where / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = where / "run"
    cmd = [sys.executable, "-m", "engine.cli", "run", str(path), "--run-dir", str(run_dir), "-q"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=e2e.child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join((proc.stderr or proc.stdout).splitlines(True)[-TAIL:])
        sys.exit(f"{shlex.join(cmd)} exited with {proc.returncode}; last lines of its stderr:\n{tail}")
    evals = pd.read_parquet(run_dir / "evals", columns=["step", "group", "correct"])
    last = int(evals["step"].max())
    accuracy = evals[evals["step"] == last].groupby("group")["correct"].mean()  # NaN (unscored) rows skipped
    events = pd.read_parquet(run_dir / "events")
    rebalances = events[events["kind"] == "rebalance"]
    return {
        "wall_s": wall,
        "eval_step": last,
        "accuracy": {g: float(a) for g, a in accuracy.items()},
        "rebalances": [
            {
                "step": int(r.step),
                "group": r.group,
                "action": r.detail,
                "donor": r.donor,
                "gap": float(r.gap),
                "old": json.loads(r.old or "{}"),
                "new": json.loads(r.new or "{}"),
            }
            for r in rebalances.itertuples()
        ],
        "run_dir": str(run_dir),
    }


def run_seed(args: argparse.Namespace, seed: int, tmp: Path) -> dict:
    cfgs = configs(args, seed)
    out = {"seed": seed}
    for arm in ARMS:
        print(f"seed {seed}: {arm} ...", flush=True)
        out[arm] = run_one(cfgs[arm], tmp / f"seed{seed}" / arm)
        out[arm]["config"] = cfgs[arm]
    pop = list(out["population"]["accuracy"].values())
    out["best"], out["mean"] = max(pop), statistics.fmean(pop)
    out["single_accuracy"] = next(iter(out["single"]["accuracy"].values()))
    return out


# --- report ---------------------------------------------------------------------------------------


def print_seed(r: dict) -> None:
    pop, single = r["population"], r["single"]
    print(f"\nseed {r['seed']}  (held-out accuracy at step {pop['eval_step']})")
    for g, a in sorted(pop["accuracy"].items()):
        print(f"  {g:<12} {a:6.3f}")
    print(
        f"  {'pop best':<12} {r['best']:6.3f}\n  {'pop mean':<12} {r['mean']:6.3f}\n"
        f"  {'single':<12} {r['single_accuracy']:6.3f}"
    )
    moves = ", ".join(f"{e['group']}<-{e['donor']}@{e['step']}" for e in pop["rebalances"]) or "none"
    print(f"  rebalances: {moves}")
    print(f"  wall: population {pop['wall_s']:.0f} s, single {single['wall_s']:.0f} s")


def summarize(results: list[dict]) -> dict:
    def stats(key: str) -> dict:
        values = [r[key] for r in results]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    single = [r["single_accuracy"] for r in results]
    return {
        "best": stats("best"),
        "mean": stats("mean"),
        "single": stats("single_accuracy"),
        "best_beats_single": sum(r["best"] > s for r, s in zip(results, single)),
        "mean_beats_single": sum(r["mean"] > s for r, s in zip(results, single)),
        "seeds": len(results),
    }


def print_summary(s: dict, args: argparse.Namespace) -> None:
    k, p, g = args.groups, args.prompts, args.group_size
    print(
        f"\nover {s['seeds']} seed(s): {k} replicas x {p} prompts vs 1 adapter x {k * p} prompts, "
        f"{g} samples each, {args.steps} steps, {args.eval_prompts} held-out prompts (mean +- std)"
    )
    for label, key in (("pop best", "best"), ("pop mean", "mean"), ("single", "single")):
        print(f"  {label:<12} {s[key]['mean']:6.3f} +- {s[key]['std']:.3f}")
    print(
        f"  best > single in {s['best_beats_single']}/{s['seeds']} seeds; "
        f"mean > single in {s['mean_beats_single']}/{s['seeds']}"
    )


def main() -> None:
    ap, args = parse_args()
    sys.path.insert(0, str(ROOT))
    first = configs(args, args.seeds[0])
    if args.dry_run:
        import yaml

        for arm in ARMS:
            print(f"# {arm} (seed {args.seeds[0]}; other seeds differ only in seed:)")
            print(yaml.safe_dump(first[arm], sort_keys=False))
        validate(ap, first)
        return
    validate(ap, first)
    from engine.config.schema import TinyModelConfig
    from engine.models.base import resolve_base_model

    # builtin:tiny is built on first use when its recipe is not the shipped one: once, here, not inside a timed run
    resolve_base_model(args.model, TinyModelConfig().model_dump())
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(),
        "versions": e2e.versions(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "dry_run")},
    }
    tmp = Path(tempfile.mkdtemp(prefix="lorapop-population-"))
    try:
        result["seeds"] = []
        for seed in args.seeds:
            result["seeds"].append(run_seed(args, seed, tmp))
            print_seed(result["seeds"][-1])
    finally:
        if args.keep:
            print(f"kept configs and run directories in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["summary"] = summarize(result["seeds"])
    print_summary(result["summary"], args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
