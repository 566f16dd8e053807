"""Benchmark: the trainer service's fused step for N groups against N single-adapter PEFT steps, no Ray.

    python bench/fused_step.py                                   # builtin:tiny on the CPU, N = 1 4
    python bench/fused_step.py --model builtin:random-0.5b --device cuda --dtype bfloat16 --groups 1 8 64 \
        --r 16 --micro-batch-tokens 16384 --profile 8

The same per-group work as bench/e2e.py (prompts x generations rows, a prompt and a completion length,
LoRA on every linear layer, dapo, IS correction): ``TrainerService.train`` (the fused step with its
checks, what a lorapop step runs) against one PEFT model with one adapter doing one group's step
(a forward, the same loss, a backward, AdamW: what one TRL run's trainer does), measured side by side,
interleaved, median of ``--repeats`` after a warm-up. Prints seconds per step, the ratio
``N x PEFT / fused`` and the peak device memory; ``--profile N`` prints torch.profiler's top ops of
one fused step of N groups.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rows", type=int, default=32, help="prompts x generations per group")
    ap.add_argument("--prompts", type=int, default=4, help="distinct prompts per group")
    ap.add_argument("--prompt-len", type=int, default=120)
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--micro-batch-tokens", type=int, default=0, help="0: the whole batch in one pass")
    ap.add_argument("--no-share-prompts", action="store_true")
    ap.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing in the fused trainer and the PEFT baseline",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, help="profile one fused step of this many groups")
    return ap.parse_args()


def make_job(name: str, vocab: int, args, seed: int):
    import torch

    from engine.trainer.fused import GroupBatch, LossSettings
    from engine.trainer.service import TrainJob
    from engine.trainer.slots import SlotHParams

    g = torch.Generator().manual_seed(seed)
    B, P, L = args.rows, args.prompt_len, args.completion_len
    prompts = torch.randint(3, vocab, (args.prompts, P), generator=g)
    ids = torch.cat([prompts.repeat_interleave(B // args.prompts, 0), torch.randint(3, vocab, (B, L), generator=g)], 1)
    mask = torch.ones(B, L)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    attn = torch.cat([torch.ones(B, P, dtype=torch.long), mask.long()], 1)
    batch = GroupBatch(
        name,
        ids,
        attn,
        P,
        mask,
        -torch.rand(B, L, generator=g) * 3,
        torch.randn(B, generator=g),
        LossSettings(loss_type="dapo", is_correction=True),
    )
    return TrainJob(batch, SlotHParams(lr=1e-4))


def peft_step(model, optimizer, job, device) -> None:
    """One group's GRPO step on a one-adapter PEFT model, as one TRL run's trainer takes it."""
    import torch

    from engine.trainer.grpo import aggregation_weights, clipped_token_loss

    b = job.batch
    ids, attn, mask = b.input_ids.to(device), b.attention_mask.to(device), b.mask.to(device)
    old, adv = b.old_logp.to(device), b.advantages.to(device)
    P = b.prompt_len
    logits = model(input_ids=ids, attention_mask=attn).logits[:, P - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    tok, _ = clipped_token_loss(logp, old, adv, 0.2, 0.2)
    loss = (tok * aggregation_weights("dapo", mask, 1)).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    import torch
    from peft import get_peft_model

    from engine.config.schema import TinyModelConfig
    from engine.models.base import load_base, peft_lora_config, resolve_base_model
    from engine.trainer.service import SlotSpec, TrainerService
    from engine.trainer.slots import SlotHParams

    path = resolve_base_model(args.model, TinyModelConfig().model_dump())
    lora = {"r": args.r, "alpha": 2 * args.r, "dropout": 0.0, "target_modules": "all-linear"}
    peft = get_peft_model(load_base(path, args.dtype, args.device), peft_lora_config(**lora))
    vocab = peft.config.vocab_size if hasattr(peft, "config") else peft.base_model.model.config.vocab_size
    if args.checkpointing:  # as TRL's default: transformers' non-reentrant checkpointing, in training mode
        peft.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft.train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    one = make_job("g0", vocab, args, 0)
    peft_s = []
    for _ in range(args.repeats + 1):
        peft_s.append(timed(functools.partial(peft_step, peft, opt, one, args.device), args.device))
    peft_step_s = statistics.median(peft_s[1:])
    del peft, opt
    if args.device == "cuda":
        torch.cuda.empty_cache()
    print(f"PEFT, one group alone: {peft_step_s:.3f} s per step", flush=True)
    for n in sorted(set(args.groups) | ({args.profile} if args.profile else set())):
        names = [f"g{i}" for i in range(n)]
        specs = {g: SlotSpec(lora, i, SlotHParams(lr=1e-4)) for i, g in enumerate(names)}
        svc = TrainerService(
            path,
            specs,
            args.device,
            args.dtype,
            share_prompts=not args.no_share_prompts,
            token_budget=args.micro_batch_tokens or None,
            checkpointing=args.checkpointing,
        )
        jobs = [make_job(g, vocab, args, i) for i, g in enumerate(names)]
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [timed(functools.partial(svc.train, jobs), args.device) for _ in range(args.repeats + 1)]
        t_pub = [timed(functools.partial(svc.adapter_states, names), args.device) for _ in range(args.repeats)]
        fused = statistics.median(times[1:])
        mem = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else float("nan")
        print(
            f"N={n:3d}  fused step {fused:7.3f} s  N x PEFT {n * peft_step_s:7.3f} s  ratio x{n * peft_step_s / fused:5.2f}"
            f"  adapters out {statistics.median(t_pub):.3f} s  peak {mem:8.0f} MiB",
            flush=True,
        )
        if n == args.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
            with profile(activities=acts) as prof:
                svc.train(jobs)
                sync(args.device)
            key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)
        del svc
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
