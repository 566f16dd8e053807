"""Benchmark: the hf rollout backend, all groups in one mixed-adapter batch vs one generate per group.

    python bench/rollout_hf.py [--groups 3] [--prompts 4] [--group-size 8] [--tokens 48] [--repeats 3]

Same prompts, same adapters, same token budget, measured side by side in one process; prints
output tokens/s of each way and their ratio. Uses builtin:tiny (built on first use).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    from engine.config import TinyModelConfig
    from engine.models import load_base, peft_lora_config
    from engine.rollout.hf import HFRollout
    from engine.rollout.types import RolloutRequest
    from engine.tiny_model import ensure_tiny_model
    from envs.arithmetic import ArithmeticEnv

    path = str(ensure_tiny_model(TinyModelConfig().model_dump()))
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    names = [f"group{i}" for i in range(args.groups)]
    svc = HFRollout(path, {n: lora for n in names})
    for i, n in enumerate(names):
        torch.manual_seed(i)
        m = get_peft_model(load_base(path), peft_lora_config(**lora))
        svc.publish(n, 0, {k: v + 0.02 * torch.randn_like(v) for k, v in get_peft_model_state_dict(m).items()})
    tok = svc.tokenizer
    requests = []
    for i, n in enumerate(names):
        rows = ArithmeticEnv(seed=i, difficulty=1 + i % 4).batch(0, args.prompts)
        ids = [tok(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for r in rows]
        # min_new_tokens is not in the request: force equal work by timing tokens actually produced
        requests.append(RolloutRequest(n, ids, args.group_size, args.tokens, seed=i))

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
    print(f"hf rollout, {args.groups} groups x {args.prompts} prompts x {args.group_size} samples, <= {args.tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  one mixed-adapter batch : {m:8.1f} output tokens/s  (runs: {', '.join(f'{x:.0f}' for x in mixed)})")
    print(f"  one generate per group  : {s:8.1f} output tokens/s  (runs: {', '.join(f'{x:.0f}' for x in separate)})")
    print(f"  ratio mixed / per-group : {m / s:.2f}x")


if __name__ == "__main__":
    main()
