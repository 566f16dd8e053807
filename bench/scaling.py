"""Benchmark: how a lorapop step scales with the number of groups on one device, the same work per group.

    python bench/scaling.py --groups 1 2 4 8 16 32 64 --steps 5 --model builtin:random-0.5b --out bench/scaling.json
    python bench/scaling.py --groups 1 2 4 --steps 4 --model builtin:tiny          # the CPU, in minutes

For each N: one ``lorapop run`` with N groups (bench/e2e.py's config: arithmetic task, the given
prompts x generations x completion length and LoRA per group, no eval, no rebalancing), then the
steady step (median after the first 2 steps, from when each step's steps/ part was written) split
into rollout (the batched generate), train (the fused trainer step), publish (every updated adapter
to the rollout service) and the rest (scoring, packing, Parquet, coordinator), plus the peak memory
(cuda: nvidia-smi's memory.used of the whole GPU; CPU: the run's process tree RSS). Ratios are
against N = 1 of the same invocation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/ is a folder of scripts, not a package)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="builtin:random-0.5b")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rollout", default="{}", help="lorapop's rollout: section as JSON (bench/e2e.py)")
    ap.add_argument("--training", default="{}", help="lorapop's training: section as JSON (bench/e2e.py)")
    ap.add_argument("--population", default="{}", help="lorapop's population: section as JSON (bench/e2e.py)")
    ap.add_argument("--out", default="bench/scaling.json")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    import importlib.util

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    vllm = device == "cuda" and importlib.util.find_spec("vllm") is not None
    rows = []
    with tempfile.TemporaryDirectory(prefix="lorapop-scaling-") as tmp:
        for n in args.groups:
            run_args = argparse.Namespace(**{**vars(args), "groups": n})
            d = Path(tmp) / f"n{n}"
            d.mkdir()
            r = e2e.run_lorapop(run_args, device, vllm, d)
            split = r["phases"]
            phases = {k: split.get(k, 0.0) for k in ("rollout", "train", "publish")}
            other = r["steady_step_s"] - sum(phases.values())
            mem = r["memory"].get("gpu_mib", r["memory"].get("rss_mib"))
            rows.append(
                {
                    "groups": n,
                    "step_s": r["steady_step_s"],
                    **phases,
                    "other": other,
                    "phases": split,
                    "peak_mib": mem,
                    "wall_s": r["wall_s"],
                    "first_step_s": r["first_step_s"],
                    "final_reward": r["final_reward"],
                }
            )
            print(
                f"N={n:3d}  step {r['steady_step_s']:7.2f} s  rollout {phases['rollout']:6.2f}  train "
                f"{phases['train']:6.2f}  publish {phases['publish']:6.2f}  other {other:6.2f}  "
                f"peak {mem:9.0f} MiB  first step {r['first_step_s']:6.1f} s",
                flush=True,
            )
    base = rows[0]
    print(f"\nagainst N={base['groups']}:")
    for row in rows:
        print(
            f"N={row['groups']:3d}  step x{row['step_s'] / base['step_s']:.2f}  "
            f"per group x{row['step_s'] / base['step_s'] * base['groups'] / row['groups']:.3f}  "
            f"peak memory x{row['peak_mib'] / base['peak_mib']:.3f}"
        )
    out = {
        "device": e2e.device_name(device),
        "versions": e2e.versions(),
        "command": " ".join(sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
