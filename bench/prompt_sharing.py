"""Benchmark: a GRPO group's samples share one forward of their prompt, in the hf rollout (prefill once
per prompt, KV cache copied to its samples) and in the trainer (one prompt forward with gradients).

    python bench/prompt_sharing.py [--groups 4] [--prompts 4] [--group-size 8] [--tokens 48] [--repeats 3]

Each side is timed against the same code with sharing switched off (every row prefilled / forwarded
from its whole prompt), interleaved in one process on the same inputs; prints medians and ratios.
Uses builtin:tiny (built on first use) and the medical task's prompts (a system prompt + a question).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

from common import LORA, batch_args, task_requests, tiny_service


def main() -> None:
    args = batch_args(__doc__.splitlines()[0], groups=4)

    import torch
    from peft import get_peft_model

    import engine.trainer.grpo as grpo
    from engine.models.base import load_base, peft_lora_config
    from engine.rollout.hf import HFRollout
    from envs.medical import MedicalEnv

    path, svc, names = tiny_service(args.groups)
    tok = svc.tokenizer
    requests = task_requests(svc, names, lambda i: MedicalEnv(seed=i), args)

    @contextmanager
    def unshared_prefill():
        """No separate prefill: generate prefills every row from its whole prompt."""
        prefill = HFRollout._prefill
        HFRollout._prefill = lambda self, *a: None
        try:
            yield
        finally:
            HFRollout._prefill = prefill

    # a trainer batch shaped like one group's step: its prompts x group_size samples of one result
    result = svc.generate(requests[:1])[0]
    width = max(len(p) for p in result.prompt_ids)
    length = max(len(c) for c in result.completion_ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor(
        [
            [pad] * (width - len(p)) + p + c + [pad] * (length - len(c))
            for p, c in zip(result.prompt_ids, result.completion_ids)
        ]
    )  # [B, P+L]
    attention_mask = torch.tensor(
        [
            [0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c))
            for p, c in zip(result.prompt_ids, result.completion_ids)
        ]
    )
    trainer = get_peft_model(load_base(path), peft_lora_config(**LORA))
    trainer.train()

    def train_step(share: bool):
        trainer.zero_grad()
        grpo.completion_logprobs(trainer, input_ids, attention_mask, width, 1.0, share_prompt=share).sum().backward()

    def seconds(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    rollout = {"shared": [], "full": []}
    train = {"shared": [], "full": []}
    svc.generate(requests)
    train_step(True)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        rollout["shared"].append(seconds(lambda: svc.generate(requests)))
        train["shared"].append(seconds(lambda: train_step(True)))
        with unshared_prefill():
            rollout["full"].append(seconds(lambda: svc.generate(requests)))
        train["full"].append(seconds(lambda: train_step(False)))
    med = {k: {s: statistics.median(v[s]) for s in v} for k, v in (("rollout", rollout), ("train", train))}
    print(
        f"{args.groups} groups x {args.prompts} prompts x {args.group_size} samples, <= {args.tokens} new tokens; "
        f"prompts {min(len(p) for r in requests for p in r.prompt_ids)}-{width} tokens; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"  rollout, all groups' generate : shared prefill {med['rollout']['shared']:.2f}s  "
        f"every row {med['rollout']['full']:.2f}s  ratio {med['rollout']['full'] / med['rollout']['shared']:.2f}x"
    )
    print(
        f"  trainer, one group's fwd+bwd  : shared prompt  {med['train']['shared']:.2f}s  "
        f"every row {med['train']['full']:.2f}s  ratio {med['train']['full'] / med['train']['shared']:.2f}x"
    )


if __name__ == "__main__":
    main()
