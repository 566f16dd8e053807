"""Benchmark: the hf rollout backend, all groups in one mixed-adapter batch vs one generate per group.

    python bench/rollout_hf.py [--groups 3] [--prompts 4] [--group-size 8] [--tokens 48] [--repeats 3]

Same prompts, same adapters, same token budget, measured side by side in one process; prints
output tokens/s of each way and their ratio. Uses builtin:tiny (built on first use).
"""

from __future__ import annotations

import statistics
import time

from common import batch_args, task_requests, tiny_service


def main() -> None:
    args = batch_args(__doc__.splitlines()[0], groups=3)

    import torch

    from envs.arithmetic import ArithmeticEnv

    _, svc, names = tiny_service(args.groups)
    # min_new_tokens is not in the request: force equal work by timing tokens actually produced
    requests = task_requests(svc, names, lambda i: ArithmeticEnv(seed=i, difficulty=1 + i % 4), args)

    def timed(fn):
        t0 = time.perf_counter()
        results = fn()
        seconds = time.perf_counter() - t0
        return sum(len(c) for r in results for c in r.completion_ids) / seconds

    mixed, separate = [], []
    svc.generate(requests)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        mixed.append(timed(lambda: svc.generate(requests)))
        separate.append(timed(lambda: [svc.generate([r])[0] for r in requests]))
    m, s = statistics.median(mixed), statistics.median(separate)
    print(
        f"hf rollout, {args.groups} groups x {args.prompts} prompts x {args.group_size} samples, <= {args.tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"  one mixed-adapter batch : {m:8.1f} output tokens/s  (runs: {', '.join(f'{x:.0f}' for x in mixed)})")
    print(f"  one generate per group  : {s:8.1f} output tokens/s  (runs: {', '.join(f'{x:.0f}' for x in separate)})")
    print(f"  ratio mixed / per-group : {m / s:.2f}x")


if __name__ == "__main__":
    main()
