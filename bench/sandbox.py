"""Benchmark: the cost of the kernel sandbox (issue #13) per sandboxed call, side by side with the Python
guards alone, on the code task's own calls.

    python bench/sandbox.py [--calls 40]

Both sides run the same solutions (a correct one, a wrong one, one that raises) through
``run_sandboxed`` one after another, alternating, so the host's load falls on both alike; the ratio
is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SOLUTIONS = [
    ("correct", "def solve(xs):\n    return max(xs)"),
    ("wrong", "def solve(xs):\n    return min(xs)"),
    ("raises", "def solve(xs):\n    return xs[99]"),
]
CALLS = ["solve([3, 1, 2])", "solve([5])", "solve(list(range(100)))"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40, help="sandboxed runs per side")
    args = ap.parse_args()
    from rewards.kernel_sandbox import features
    from rewards.sandbox import run_sandboxed

    have = features()
    if have["missing"]:
        sys.exit(f"the kernel sandbox is not available here: {have['missing']}")
    times: dict[str, list[float]] = {"kernel": [], "python guards only": []}
    for i in range(args.calls):
        _, code = SOLUTIONS[i % len(SOLUTIONS)]
        for side in ("kernel", "python guards only") if i % 2 == 0 else ("python guards only", "kernel"):
            t0 = time.perf_counter()
            run_sandboxed(code, CALLS, weaker_ok=True) if side == "kernel" else _weaker(code)
            times[side].append(time.perf_counter() - t0)
    for side, values in times.items():
        print(
            f"{side:20s} median {statistics.median(values) * 1000:6.1f} ms  p90 "
            f"{sorted(values)[int(0.9 * len(values))] * 1000:6.1f} ms  ({len(values)} calls)"
        )
    k, p = statistics.median(times["kernel"]), statistics.median(times["python guards only"])
    print(
        f"kernel sandbox / python guards only: x{k / p:.2f} (+{(k - p) * 1000:.1f} ms a call); "
        f"features: namespaces {have['namespaces']}, landlock ABI {have['landlock']}, seccomp {have['seccomp']}"
    )


def _weaker(code: str) -> None:
    """The same run with the kernel's part off (as on a host without it, weaker_sandbox accepted)."""
    from unittest import mock

    import rewards.sandbox as sandbox

    with mock.patch.object(sandbox, "kernel_plan", lambda weaker_ok=False: None):
        sandbox.run_sandboxed(code, CALLS)


if __name__ == "__main__":
    main()
