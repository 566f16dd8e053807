"""Benchmark: lorapop training N groups in one run against N TRL GRPOTrainer runs one after another,
each side run the way a user runs it (a fresh process, wall clock from start to exit).

    python bench/e2e.py --groups 4 --steps 10 --prompts 4 --generations 8 --max-completion 48 \
        --lr 2e-3 --r 8 --alpha 16 --model builtin:tiny --device auto --out bench/e2e.json [--only lorapop|trl]

lorapop: one ``python -m engine.cli run CONFIG -q``, N groups (one cohort ``g-0 .. g-N-1``) on the
arithmetic task (difficulty 1), rewards format_exact + answer_numeric, no eval, no rebalancing.
TRL: for each group, one ``python bench/e2e.py --trl-worker ...`` process with a ``GRPOTrainer`` on
the same base directory, the same LoRA, rewards and GRPO settings, and the same prompts in the same
order (``ArithmeticEnv(seed + k).batch(step, prompts)`` for steps 1..N, not shuffled). On cuda
lorapop uses its vllm backend and TRL ``use_vllm=True, vllm_mode="colocate"``, both bf16 with
truncated importance sampling (token_truncate, cap 3); on the CPU both generate with transformers.

Compared side by side, measured in one invocation: wall time (TRL: the N runs summed); time to the
first finished step; steady per-step time (median over steps after the first 2: lorapop's steps/
part files are written once per step, their modification times give each step's end; TRL's from a
callback's on_step_end); TRL's per-step cost of N groups trained one after another = the sum of the
N runs' steady step times; peak memory (CPU: the process tree's summed RSS, polled every 0.2 s, and
its PSS, polled every 2 s, which counts pages shared between Ray's processes once; cuda: nvidia-smi
memory.used, the whole GPU); final reward (mean of the last 3 steps over groups). Settings TRL has no
equal for, or sets differently, are listed under "differences" in the JSON.

CPU timings need an idle machine: with other work on the cores, torch's multi-threaded kernels wait on
descheduled threads (a builtin:tiny forward measured 30x slower at 2 threads than at 1 on a loaded 2-core
host), and that hits the two sides unevenly. ``--threads 1`` pins both; the load average before and
after is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM = 2  # steps left out of the steady per-step time (start-up, first compiles)
LAST = 3  # steps averaged for the final reward


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step and group")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt (group_size / num_generations)")
    ap.add_argument("--max-completion", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="builtin:tiny", help="builtin:tiny, builtin:random-1b or a local HF directory")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of each model process (lorapop: ray.torch_threads); default every core",
    )
    ap.add_argument("--out", default="bench/e2e.json")
    ap.add_argument("--only", choices=("lorapop", "trl"), default=None)
    ap.add_argument(
        "--rollout",
        default="{}",
        help="lorapop's rollout: section as JSON, e.g. "
        '\'{"in_process": true, "engine_kwargs": {"compilation_config": {"cudagraph_specialize_lora": false}}}\'',
    )
    ap.add_argument(
        "--training", default="{}", help="lorapop's training: section as JSON, e.g. '{\"micro_batch_tokens\": 16384}'"
    )
    ap.add_argument(
        "--population", default="{}", help="lorapop's population: section as JSON, e.g. '{\"checkpoint_interval\": 5}'"
    )
    ap.add_argument(
        "--trl-runs",
        type=int,
        default=None,
        help="TRL runs actually made (default: one per group); the N runs' sums are then N x their "
        "mean (the runs are alike: same settings, other seeds), said in the table",
    )
    ap.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)  # internal: one TRL run, JSON spec
    return ap.parse_args()


def child_env() -> dict:
    """The worktree first on PYTHONPATH (Ray's workers inherit it), and no network for the hub."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


# --- peak memory of a running subprocess -----------------------------------------------------------


class PeakMemory:
    """Polls, from a thread, the peak memory of ``pid``'s process tree (CPU) or of the GPU (cuda), in MiB."""

    def __init__(self, pid: int, gpu: bool):
        self.pid, self.gpu = pid, gpu
        self.peak = {"rss_mib": 0.0, "pss_mib": 0.0} if not gpu else {"gpu_mib": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _tree(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sum(self, read) -> float:
        import psutil

        total = 0
        for p in self._tree():
            try:
                total += read(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total / 2**20

    def _poll(self) -> None:
        n = 0
        while not self._stop.wait(0.2):
            if self.gpu:
                self.peak["gpu_mib"] = max(self.peak["gpu_mib"], gpu_used_mib())
                continue
            self.peak["rss_mib"] = max(self.peak["rss_mib"], self._sum(lambda p: p.memory_info().rss))
            if n % 10 == 0:  # PSS reads smaps: every 2 s only
                self.peak["pss_mib"] = max(self.peak["pss_mib"], self._sum(lambda p: p.memory_full_info().pss))
            n += 1


def gpu_used_mib() -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    return float(sum(float(x) for x in out.split()))


def timed_run(cmd: list[str], log: Path, gpu: bool) -> dict:
    """Run ``cmd`` (output to ``log``), polling its memory; ``{"start", "wall_s", "memory"}``. Exits on failure."""
    with open(log, "w") as f:
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
        with PeakMemory(proc.pid, gpu) as mem:
            rc = proc.wait()
        wall = time.time() - start
    if rc != 0:
        tail = "".join(log.read_text().splitlines(True)[-40:])
        sys.exit(f"{shlex.join(cmd)} exited with {rc}; last lines of its log:\n{tail}")
    return {"start": start, "wall_s": wall, "memory": mem.peak}


def step_seconds(begin: float, ends: list[float]) -> list[float]:
    """Each step's duration from the times steps ended (``begin`` = when the first step started)."""
    return [b - a for a, b in zip([begin, *ends[:-1]], ends)]


def steady(seconds: list[float]) -> tuple[float, int]:
    """Median step time over the steps after the first ``WARM`` (fewer left out if the run is that short)."""
    warm = min(WARM, len(seconds) - 1)
    return statistics.median(seconds[warm:]), warm


# --- lorapop: one run, N groups ------------------------------------------------------------------


def lorapop_config(args, device: str, vllm: bool) -> dict:
    grpo = {
        "prompts_per_step": args.prompts,
        "group_size": args.generations,
        "max_completion_length": args.max_completion,
        "lr": args.lr,
        "beta": 0.0,
        "loss_type": "dapo",
        "scale_rewards": "group",
        "temperature": 1.0,
    }
    if vllm:
        grpo["vllm_importance_sampling_correction"] = True
    return {
        "seed": args.seed,
        "steps": args.steps,
        "base_model": args.model,
        "backend": "auto" if device == "cuda" else "hf",
        "training": {"device": device, **json.loads(args.training)},  # defaults: see engine/config/schema.py
        **({"rollout": rollout} if (rollout := json.loads(args.rollout)) else {}),
        "eval_prompts": 0,
        "samples_per_step": 0,
        "grpo": grpo,
        "lora": {"r": args.r, "alpha": args.alpha, "target_modules": "all-linear"},
        "population": {"strategy": "none", **json.loads(args.population)},
        **({"ray": {"torch_threads": args.threads}} if args.threads else {}),
        "groups": [
            {
                "name": "g",
                "num_groups": args.groups,
                "env": {"type": "arithmetic", "difficulty": 1},
                "rewards": [{"name": "format_exact"}, {"name": "answer_numeric"}],
            }
        ],
    }


def run_lorapop(args, device: str, vllm: bool, tmp: Path) -> dict:
    import pandas as pd
    import yaml

    cfg = tmp / "lorapop.yaml"
    cfg.write_text(yaml.safe_dump(lorapop_config(args, device, vllm), sort_keys=False))
    run_dir = tmp / "lorapop-run"
    cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--run-dir", str(run_dir), "-q"]
    t = timed_run(cmd, tmp / "lorapop.log", device == "cuda")
    shutil.copy(tmp / "lorapop.log", Path(args.out).with_suffix(f".lorapop-{args.groups}.log"))  # kept for reading
    # a steps/ part is written once per step (after all groups' updates); events/part-000000 once the
    # services and actors are up, before step 1
    ends = [p.stat().st_mtime for p in sorted((run_dir / "steps").glob("part-*.parquet"))]
    ready = (run_dir / "events" / "part-000000.parquet").stat().st_mtime
    seconds = step_seconds(ready, ends)
    step_s, warm = steady(seconds)
    df = pd.read_parquet(run_dir / "steps")
    curve = df.groupby("step")["reward"].mean().sort_index()
    last = df[df["step"] > df["step"].max() - LAST]
    phases = phase_split(df, warm)
    events = pd.read_parquet(run_dir / "events")
    runtime = sorted(set(events.loc[events["kind"] == "runtime", "detail"]))  # each service's torch, kernels, threads
    return {
        "wall_s": t["wall_s"],
        "startup_s": ready - t["start"],
        "first_step_s": ends[0] - t["start"],
        "step_seconds": seconds,
        "steady_step_s": step_s,
        "steady_skips": warm,
        "phases": phases,
        "memory": t["memory"],
        "reward_curve": curve.tolist(),
        "final_reward": float(curve.iloc[-LAST:].mean()),
        "final_reward_by_group": last.groupby("group")["reward"].mean().to_dict(),
        "runtime": runtime,
        "config": lorapop_config(args, device, vllm),
    }


def phase_split(steps, warm: int) -> dict[str, float]:
    """Median seconds of each phase of a step (the ``time/*`` columns of the ``steps`` table, the slowest
    group's) over the steps after the first ``warm``; ``rollout`` is the sampling inside ``generate``."""
    cols = [c for c in steps.columns if c.startswith("time/")]
    per_step = steps.groupby("step")[cols].max().sort_index()
    per_step = per_step.iloc[warm:] if len(per_step) > warm else per_step
    return {
        c.removeprefix("time/").removesuffix("_s"): float(statistics.median(per_step[c].dropna()))
        for c in cols
        if per_step[c].notna().any()
    }


# --- TRL: N runs, one after another --------------------------------------------------------------


def trl_worker(spec: dict) -> None:
    """One TRL GRPOTrainer run (in its own process); writes step end times and log history to spec["out"]."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.arithmetic import ArithmeticEnv
    from rewards.registry import load_reward

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    env = ArithmeticEnv(seed=spec["seed"], difficulty=1)
    rows = [r for step in range(1, spec["steps"] + 1) for r in env.batch(step, spec["prompts"])]  # lorapop's steps 1..N
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    times = {"begin": None, "ends": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times["begin"] = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            times["ends"].append(time.time())

    cuda, vllm = spec["device"] == "cuda", spec["vllm"]
    config = GRPOConfig(
        output_dir=spec["output_dir"],
        seed=spec["seed"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["prompts"] * spec["generations"],  # one generation batch = one optimizer step
        gradient_accumulation_steps=1,
        num_generations=spec["generations"],
        max_completion_length=spec["max_completion"],
        temperature=1.0,
        top_p=1.0,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        adam_beta1=0.9,
        adam_beta2=0.99,  # lorapop's AdamW
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        num_iterations=1,
        shuffle_dataset=False,
        # as lorapop's training.gradient_checkpointing auto: on for cuda (TRL's own default), off on the cpu
        gradient_checkpointing=cuda,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda,
        model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"},
        use_vllm=vllm,
        vllm_mode="colocate",
        vllm_importance_sampling_correction=vllm,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=3.0,  # as lorapop's
        vllm_gpu_memory_utilization=spec["gpu_memory_utilization"],
        vllm_max_model_length=spec["max_model_len"],
    )
    trainer = GRPOTrainer(
        model=spec["model_path"],
        reward_funcs=[load_reward("format_exact"), load_reward("answer_numeric")],
        args=config,
        train_dataset=dataset,
        callbacks=[Clock()],
        peft_config=LoraConfig(
            r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    trainer.train()
    Path(spec["out"]).write_text(
        json.dumps({**times, "log_history": trainer.state.log_history, "torch_threads": torch.get_num_threads()})
    )


def run_trl(args, device: str, vllm: bool, model_path: str, tmp: Path) -> dict:
    from engine.config.schema import RolloutConfig

    rollout = RolloutConfig()
    runs = []
    for k in range(min(args.trl_runs or args.groups, args.groups)):
        spec = {
            "seed": args.seed + k,  # lorapop's replica k of the cohort: run seed + k
            "steps": args.steps,
            "prompts": args.prompts,
            "generations": args.generations,
            "max_completion": args.max_completion,
            "lr": args.lr,
            "r": args.r,
            "alpha": args.alpha,
            "model_path": model_path,
            "device": device,
            "vllm": vllm,
            "threads": args.threads,
            "gpu_memory_utilization": rollout.gpu_memory_utilization,
            "max_model_len": rollout.max_model_len,
            "output_dir": str(tmp / f"trl-{k}"),
            "out": str(tmp / f"trl-{k}.json"),
        }
        t = timed_run(
            [sys.executable, str(Path(__file__).resolve()), "--trl-worker", json.dumps(spec)],
            tmp / f"trl-{k}.log",
            device == "cuda",
        )
        got = json.loads(Path(spec["out"]).read_text())
        seconds = step_seconds(got["begin"], got["ends"])
        step_s, warm = steady(seconds)
        logged = sorted((h for h in got["log_history"] if "reward" in h), key=lambda h: h["step"])
        curve = [h["reward"] for h in logged]
        runs.append(
            {
                "wall_s": t["wall_s"],
                "startup_s": got["begin"] - t["start"],
                "first_step_s": got["ends"][0] - t["start"],
                "step_seconds": seconds,
                "steady_step_s": step_s,
                "trl_step_time": [h.get("step_time") for h in logged],  # TRL's own timer, for comparison
                "torch_threads": got["torch_threads"],
                "steady_skips": warm,
                "memory": t["memory"],
                "reward_curve": curve,
                "final_reward": statistics.fmean(curve[-LAST:]),
                "spec": spec,
            }
        )
        print(f"  TRL run {k + 1}/{args.groups}: {t['wall_s']:.1f}s", flush=True)
    memory = {key: max(r["memory"][key] for r in runs) for key in runs[0]["memory"]}
    curves = [r["reward_curve"] for r in runs]
    scale = args.groups / len(runs)  # 1 unless --trl-runs made fewer runs than groups
    return {
        "wall_s": scale * sum(r["wall_s"] for r in runs),
        "first_step_s": runs[0]["first_step_s"],
        "startup_s": runs[0]["startup_s"],
        "steady_step_s": scale * sum(r["steady_step_s"] for r in runs),
        "runs_made": len(runs),
        "extrapolated": scale != 1,
        "memory": memory,
        "final_reward": statistics.fmean(r["final_reward"] for r in runs),
        "reward_curve": [statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))],
        "runs": runs,
    }


# --- report ---------------------------------------------------------------------------------------

DIFFERENCES = [
    (
        "checkpoints: lorapop checkpoints adapters, optimizer and RNG states every step (its default, for exact "
        "resume) and saves each adapter at the end; TRL runs with save_strategy='no'"
    ),
    (
        "LoRA init: both are PEFT's default (A Kaiming-uniform, B zero), drawn from different RNG streams "
        "(lorapop: the group seed; TRL: the global RNG when GRPOTrainer wraps the model)"
    ),
    (
        "rollout sampling seeds: lorapop seeds each step's sampling from (group seed, step); TRL seeds the process "
        "once (GRPOConfig.seed = group seed); same prompts, different samples"
    ),
    (
        "cuda weight sync: lorapop publishes each group's LoRA to vLLM as a named adapter (multi-LoRA); TRL colocate "
        "merges the adapter into the base and pushes the merged weights to its vLLM every step"
    ),
    (
        "cuda memory split: lorapop's vLLM takes rollout.gpu_memory_utilization (0.35) and the trainer the rest; "
        "TRL's vllm_gpu_memory_utilization is set to the same 0.35"
    ),
    (
        "cpu: lorapop's trainer shares one prompt forward across its group_size samples (training.share_prompts=auto) "
        "and its hf rollout prefills each prompt once; TRL forwards every row from its whole prompt"
    ),
    (
        "lorapop's steps/ part times include writing the step's Parquet parts and the checkpoint; TRL's on_step_end "
        "includes its logging"
    ),
]


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "trl", "transformers", "peft", "vllm", "ray", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=False, capture_output=True, text=True
            )
            .stdout.strip()
            .replace("\n", ", ")
        )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "cpu",
    )
    return f"{model}, {os.cpu_count()} cores"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    lp, trl = result.get("lorapop"), result.get("trl")
    s = result["settings"]
    table = Table(
        title=f"{s['groups']} groups x {s['steps']} steps x {s['prompts']} prompts x {s['generations']} "
        f"samples, <= {s['max_completion']} tokens; {result['device']} ({result['device_name']})"
    )
    table.add_column("")
    table.add_column("lorapop (1 run)", justify="right")
    made = trl.get("runs_made", s["groups"]) if trl else s["groups"]
    table.add_column(
        f"TRL ({s['groups']} runs)"
        if made == s["groups"]
        else f"TRL ({s['groups']} runs: {s['groups']} x the mean of {made})",
        justify="right",
    )
    table.add_column("TRL / lorapop", justify="right")

    def row(label: str, key, fmt: str, ratio: bool = True):
        a = key(lp) if lp else None
        b = key(trl) if trl else None
        cell = lambda v: "-" if v is None else format(v, fmt)
        table.add_row(label, cell(a), cell(b), f"{b / a:.2f}x" if ratio and a and b else "-")

    row("wall time (s)", lambda r: r["wall_s"], ".1f")
    row("start-up, to before step 1 (s)", lambda r: r["startup_s"], ".1f")
    row("time to first step (s)", lambda r: r["first_step_s"], ".1f")
    row("steady step, all groups (s)", lambda r: r["steady_step_s"], ".2f")
    for key in (lp or trl)["memory"]:
        row(f"peak memory, {key.replace('_mib', '')} (MiB)", lambda r, k=key: r["memory"][k], ".0f")
    row(f"final reward (last {LAST} steps)", lambda r: r["final_reward"], ".3f", ratio=False)
    table.caption = (
        f"load average before / after: {result['loadavg_before'][0]:.1f} / "
        f"{result['loadavg_after'][0]:.1f} on {os.cpu_count()} cores"
    )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main() -> None:
    args = parse_args()
    if args.trl_worker:
        return trl_worker(json.loads(args.trl_worker))
    sys.path.insert(0, str(ROOT))
    import importlib.util

    import torch

    from engine.config.schema import TinyModelConfig
    from engine.models.base import resolve_base_model

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    vllm = device == "cuda" and importlib.util.find_spec("vllm") is not None
    model_path = resolve_base_model(args.model, TinyModelConfig().model_dump())  # built once, before either side
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(),
        "device": device,
        "device_name": device_name(device),
        "rollout": "vllm" if vllm else "transformers",
        "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "trl_worker"},
        "model_path": model_path,
        "differences": DIFFERENCES,
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="lorapop-e2e-") as tmp:
        if args.only in (None, "lorapop"):
            print(f"lorapop: {args.groups} groups in one run ...", flush=True)
            result["lorapop"] = run_lorapop(args, device, vllm, Path(tmp))
        if args.only in (None, "trl"):
            print(f"TRL: {args.groups} runs one after another ...", flush=True)
            result["trl"] = run_trl(args, device, vllm, model_path, Path(tmp))
    if "lorapop" in result and "trl" in result:
        lp, trl = result["lorapop"], result["trl"]
        ratios = {k: trl[k] / lp[k] for k in ("wall_s", "first_step_s", "steady_step_s")}
        ratios.update({f"memory_{k}": trl["memory"][k] / v for k, v in lp["memory"].items() if v})
        result["ratios"] = ratios
    result["loadavg_after"] = os.getloadavg()
    print_table(result)
    if "lorapop" in result:
        print(
            "lorapop per-step phases (median s): "
            + ", ".join(f"{k} {v:.3f}" for k, v in result["lorapop"]["phases"].items())
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
