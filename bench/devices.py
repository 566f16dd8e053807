"""Benchmark: the same population on 1 device and on 2 (``ray.devices``), side by side in one invocation.

    python bench/devices.py --out bench/devices.json          # a machine with 2 GPUs: 16 groups, random-0.5b, vLLM
    python bench/devices.py --device cpu --model builtin:tiny --backend hf --groups 4 --steps 2 --prompts 1 \
        --generations 2 --max-completion 8 --threads 1 --num-cpus 2 --out /tmp/devices.json   # a CPU smoke test

For each entry of ``--devices`` (default 1, then 2): one ``engine.loop.coordinator.run`` in this process,
in a fresh embedded Ray (the run starts and stops it), with ``ray.devices`` set to it and everything else
the same: ``--groups`` groups (one cohort ``g-0 .. g-N-1`` on the arithmetic task, difficulty 1, rewards
format_exact + answer_numeric, as bench/e2e.py; no eval, no rebalancing, no samples written). On cuda a
run on N devices sees only the first N GPUs (``CUDA_VISIBLE_DEVICES``, read by Ray when it starts), so
the 1-device run is one GPU and not a 2-GPU machine's fractional packing; ``--all-gpus`` leaves them all
visible.

Reported for each, from the run's steps/ table: the mean (and median) step time ``time/step_s`` over the
steps after the first ``--warmup``; completion tokens per second over those steps (each group's
``completion_len_mean x prompts_per_step x --generations``, summed, over the summed step times); each
phase's mean (the ``time/*`` columns, the slowest group's); time to the first finished step; and, where
``nvidia-smi`` runs, each GPU's peak ``memory.used`` (sampled every ``--poll`` s from a thread during the
run; its value before the run beside it). Then the ratio of the first entry's step time to each other's
(1-device / 2-device: above 1 means 2 devices step faster).

The default ``--rollout`` is lorapop.sh's KN settings less its ``max_num_seqs: 256``: sized for 8 groups
(256 requests a step), it would cap the 1-device run at half its 512 requests a step (two waves of
decode) while each of 2 devices runs its whole 256; without it lorapop sizes ``max_num_seqs`` to each
device's step. Pass KN itself with ``--rollout`` to compare with bench/e2e.py's e2e8k runs.

Nothing here imports torch, Ray or vLLM at import time: ``--help`` works anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KN_LESS_SEQS = {"in_process": True, "engine_kwargs": {"compilation_config": {"cudagraph_specialize_lora": False}}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="ray.devices of each run, in order")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step and group")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt (group_size)")
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="builtin:random-0.5b", help="builtin:tiny, builtin:random-0.5b, a local dir")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cuda", help="training.device")
    ap.add_argument("--backend", choices=("auto", "hf", "vllm"), default="vllm")
    ap.add_argument("--rollout", default=json.dumps(KN_LESS_SEQS), help="lorapop's rollout: section as JSON")
    ap.add_argument("--training", default="{}", help="lorapop's training: section as JSON")
    ap.add_argument("--population", default="{}", help="lorapop's population: section as JSON")
    ap.add_argument("--threads", type=int, default=None, help="ray.torch_threads (None: every core)")
    ap.add_argument("--num-cpus", type=int, default=None, help="ray.num_cpus of the embedded Ray (None: all)")
    ap.add_argument("--all-gpus", action="store_true", help="leave every GPU visible to each run")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between nvidia-smi memory samples")
    ap.add_argument("--out", default="bench/devices.json")
    return ap.parse_args(argv)


def config(args: argparse.Namespace, devices: int) -> dict:
    """The run's config: bench/e2e.py's, with ``backend`` = ``--backend`` and ``ray.devices`` = ``devices``."""
    from e2e import lorapop_config  # (bench/ is on sys.path: main)

    cfg = lorapop_config(args, args.device, args.backend == "vllm")
    ray_cfg: dict = {**cfg.get("ray", {}), "devices": devices}
    if args.num_cpus:
        ray_cfg["num_cpus"] = args.num_cpus
    return {**cfg, "backend": args.backend, "ray": ray_cfg}


# --- GPU memory -------------------------------------------------------------------------------------


def gpu_memory() -> dict[int, float] | None:
    """Each GPU's ``memory.used`` (MiB) by nvidia-smi index; None where nvidia-smi does not run."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = {}
    for line in out.strip().splitlines():
        index, mib = (x.strip() for x in line.split(","))
        used[int(index)] = float(mib)
    return used or None


class PeakGpuMemory:
    """Samples every GPU's memory.used every ``poll`` s from a thread; ``peak``: the max by GPU index
    (empty where nvidia-smi does not run)."""

    def __init__(self, poll: float):
        self.poll = poll
        self.peak: dict[int, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-memory")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _run(self) -> None:
        while True:
            used = gpu_memory()
            if used is None:
                return  # no nvidia-smi: no memory columns
            self.samples += 1
            for k, v in used.items():
                self.peak[k] = max(self.peak.get(k, 0.0), v)
            if self._stop.wait(self.poll):
                return


def wait_gpus_released(before: dict[int, float] | None, timeout_s: float = 60.0, slack_mib: float = 1024) -> None:
    """After a run: wait (at most ``timeout_s``) until every GPU is back near its memory use before the
    benchmark, so the next run starts on free GPUs (Ray's workers exit after ``ray.shutdown`` returns)."""
    if not before:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = gpu_memory() or {}
        if all(now.get(k, 0.0) <= v + slack_mib for k, v in before.items()):
            return
        time.sleep(1)
    print(f"  (GPU memory still in use {timeout_s:.0f} s after the run: {gpu_memory()} MiB)", flush=True)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (else nvidia-smi's indices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x for x in env.split(",") if x.strip()]
    return [str(k) for k in sorted(gpu_memory() or {})]


# --- one run ----------------------------------------------------------------------------------------


def analyse(run_dir: Path, args: argparse.Namespace) -> dict:
    """Step times, tokens/s and phases from the run's steps/ table (means over the steps after the warm-up)."""
    import pandas as pd

    df = pd.read_parquet(run_dir / "steps")
    df["completion_tokens"] = df["completion_len_mean"] * df["prompts_per_step"] * args.generations
    cols = [c for c in df.columns if c.startswith("time/")]
    per_step = df.groupby("step")[cols].max().sort_index()  # the slowest group's (time/step_s: the same for all)
    tokens = df.groupby("step")["completion_tokens"].sum().sort_index()
    warm = min(args.warmup, len(per_step) - 1)  # a run shorter than the warm-up keeps its last step
    kept = per_step.index[warm:]
    step_s = per_step["time/step_s"]
    seconds = float(step_s.loc[kept].sum())
    events = pd.read_parquet(run_dir / "events")
    return {
        "steps_done": len(per_step),
        "warmup_skipped": warm,
        "step_s_mean": float(step_s.loc[kept].mean()),
        "step_s_median": float(statistics.median(step_s.loc[kept])),
        "step_s_min": float(step_s.loc[kept].min()),
        "step_s_max": float(step_s.loc[kept].max()),
        "tokens_per_s": float(tokens.loc[kept].sum() / seconds) if seconds > 0 else None,
        "phases_mean_s": {
            c.removeprefix("time/").removesuffix("_s"): float(per_step.loc[kept, c].mean())
            for c in cols
            if c != "time/step_s" and per_step.loc[kept, c].notna().any()
        },
        "per_step": [
            {
                "step": int(s),
                "step_s": float(step_s.loc[s]),
                "completion_tokens": float(tokens.loc[s]),
                **{c: float(per_step.loc[s, c]) for c in cols if pd.notna(per_step.loc[s, c])},
            }
            for s in per_step.index
        ],
        "reward_by_step": df.groupby("step")["reward"].mean().sort_index().tolist(),
        "placement": sorted(
            f"{row.group}: {row.detail}" for row in events[events["kind"] == "placement"].itertuples()
        ),  # (on more than one device) each group's device and node
        "runtime": sorted(set(events.loc[events["kind"] == "runtime", "detail"].astype(str))),
    }


def run_one(args: argparse.Namespace, devices: int, tmp: Path, gpus: list[str], before) -> dict:
    """One coordinator run with ``ray.devices = devices`` in a fresh Ray; its numbers (or its error)."""
    import ray

    from engine.config.schema import RunConfig
    from engine.loop.coordinator import run

    if ray.is_initialized():
        ray.shutdown()
    tag = f"[devices={devices}]"
    cfg = RunConfig.model_validate(config(args, devices))
    run_dir = tmp / f"devices-{devices}"
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    restrict = args.device == "cuda" and not args.all_gpus and gpus and devices < len(gpus)
    if restrict:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[:devices])  # Ray counts GPUs from it when it starts
    seen: dict[int, float] = {}
    start = time.time()

    def on_step(row: dict) -> None:
        if row["step"] not in seen:
            seen[row["step"]] = time.time()
            print(f"  {tag} step {row['step']}: {row.get('time/step_s', float('nan')):.2f} s", flush=True)

    def log(message: str) -> None:
        print(f"  {tag} {message}", flush=True)

    print(
        f"{tag} {args.groups} groups, {args.steps} steps"
        + (f", CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}" if restrict else ""),
        flush=True,
    )
    result: dict = {"devices": devices, "visible_gpus": gpus[:devices] if restrict else gpus}
    try:
        with PeakGpuMemory(args.poll) as mem:
            try:
                run(cfg, ROOT, run_dir, on_step=on_step, log=log)
            finally:
                if ray.is_initialized():  # the run stops the Ray it started; one left by an error is stopped here
                    ray.shutdown()
    except Exception as e:  # the other runs still go ahead; the error is in the table and the JSON
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: the steps done so far are still reported
        result["error"] = result["interrupted"] = "interrupted"
        print(f"{tag} interrupted", file=sys.stderr, flush=True)
    finally:
        if restrict:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    result["wall_s"] = time.time() - start
    if seen:
        result["first_step_s"] = min(seen.values()) - start
    if mem.samples:
        result["gpu_peak_mib"] = {str(k): v for k, v in sorted(mem.peak.items())}
        result["gpu_samples"] = mem.samples
    if (run_dir / "steps").is_dir() and seen:
        try:
            result.update(analyse(run_dir, args))
        except Exception as e:  # noqa: BLE001  (a half-written run: say so, keep the rest)
            result.setdefault("error", f"reading the steps table: {type(e).__name__}: {e}")
    if "interrupted" not in result:
        wait_gpus_released(before)
    return result


# --- report -----------------------------------------------------------------------------------------


def print_table(rows: list[dict], before: dict[int, float] | None) -> None:
    gpu_ids = sorted({k for r in rows for k in r.get("gpu_peak_mib", {})}, key=int)
    phases = [
        p for p in ("generate", "rollout", "train", "publish") if any(p in r.get("phases_mean_s", {}) for r in rows)
    ]
    head = ["devices", "step s mean", "median", "tokens/s", *(f"{p} s" for p in phases), "1st step s", "wall s"]
    head += [f"GPU{k} peak MiB" for k in gpu_ids]
    lines = [head]
    for r in rows:
        cell = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        line = [str(r["devices"]), cell(r.get("step_s_mean"), ".3f"), cell(r.get("step_s_median"), ".3f")]
        line += [cell(r.get("tokens_per_s"), ".0f")]
        line += [cell(r.get("phases_mean_s", {}).get(p), ".3f") for p in phases]
        line += [cell(r.get("first_step_s"), ".1f"), cell(r.get("wall_s"), ".1f")]
        line += [cell(r.get("gpu_peak_mib", {}).get(k), ".0f") for k in gpu_ids]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if before and gpu_ids:
        print("GPU memory before the runs (MiB): " + ", ".join(f"GPU{k} {v:.0f}" for k, v in sorted(before.items())))
    for r in rows:
        if "error" in r:
            print(f"devices={r['devices']}: FAILED: {r['error']}")


def ratios(rows: list[dict]) -> dict:
    """The first run's step time (and tokens/s) against each other run's."""
    base = rows[0]
    out = {}
    for r in rows[1:]:
        if base.get("step_s_mean") and r.get("step_s_mean"):
            key = f"{base['devices']}_over_{r['devices']}"
            out[f"step_s_mean {key}"] = base["step_s_mean"] / r["step_s_mean"]
            out[f"step_s_median {key}"] = base["step_s_median"] / r["step_s_median"]
            if base.get("tokens_per_s") and r.get("tokens_per_s"):
                out[f"tokens_per_s {r['devices']}_over_{base['devices']}"] = r["tokens_per_s"] / base["tokens_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGINT raises KeyboardInterrupt even where it was ignored at start (a background job): `timeout -s INT`
    # then stops the run cleanly (Ray shut down, the steps done so far reported)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    # Ray's workers import lorapop from the worktree, and nothing reaches for the hub
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import e2e  # bench/e2e.py: device_name, versions (imports nothing heavy at import time)

    from engine.config.schema import TinyModelConfig
    from engine.models.base import resolve_base_model

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        args.device = device
    model_path = resolve_base_model(args.model, TinyModelConfig().model_dump())  # built once, before either run
    gpus = visible_gpus() if device == "cuda" else []
    before = gpu_memory()
    result: dict = {
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv]),
        "date": datetime.now(timezone.utc).isoformat(),
        "device": device,
        "device_name": e2e.device_name(device),
        "versions": e2e.versions(),
        "settings": {k: v for k, v in vars(args).items()},
        "model_path": model_path,
        "gpu_memory_before_mib": {str(k): v for k, v in (before or {}).items()},
        "config": config(args, args.devices[0]),
        "loadavg_before": os.getloadavg(),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="lorapop-devices-") as tmp:
        for n in args.devices:
            rows.append(run_one(args, n, Path(tmp), gpus, before))
            if "interrupted" in rows[-1]:
                break
    result["runs"] = rows
    result["ratios"] = ratios(rows)
    result["loadavg_after"] = os.getloadavg()
    s = args
    print(
        f"\n{s.groups} groups x {s.prompts} prompts x {s.generations} samples, <= {s.max_completion} tokens, "
        f"{s.model}, backend {s.backend}, {device} ({result['device_name']}); means over the steps after "
        f"the first {min((r['warmup_skipped'] for r in rows if 'warmup_skipped' in r), default=s.warmup)}"
    )
    print_table(rows, before)
    for k, v in result["ratios"].items():
        print(f"ratio {k}: {v:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
