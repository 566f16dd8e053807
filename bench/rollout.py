"""Benchmark: vLLM multi-LoRA rollouts vs base-only vLLM vs the hf backend, side by side in one run.

    python bench/rollout.py --size 1b --groups 8 --prompts 32 --group-size 4 --tokens 256 --repeats 3 \
        --json $OUT/rollout.json

One random Llama (engine/models/random.py, built on the GPU in seconds), one prompt set, run as:
  - vLLM base-only: an engine without LoRA (the ceiling);
  - vLLM, every request on one adapter;
  - vLLM, mixed batches over 4 and over 8 adapters (what a population step sends);
  - the hf backend (transformers + PEFT mixed adapters), moved to the GPU, on a smaller slice of
    the same prompts (its generate keeps every step's logits), with vLLM mixed-8 on that slice.
Both vLLM engines live at once (``--gpu-mem`` each) so the variants run interleaved, repeat after
repeat, in a rotating order: drift hits all alike. Every completion runs to ``--tokens`` tokens
(``ignore_eos``), so each variant does identical work; output tokens/s = tokens / wall seconds of
the ``generate`` call. Also times publishing a rank-``--rank`` adapter per group (write to /dev/shm +
vLLM preload). Prints a markdown table; ``--json`` saves every number.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time


def random_lora_state(config, r: int, seed: int, scale: float = 0.01) -> dict:
    """A PEFT-keyed LoRA state dict (all linear layers of a Llama) with random A and B, fp32 on CPU."""
    import torch

    h, i = config.hidden_size, config.intermediate_size
    kv = h // config.num_attention_heads * config.num_key_value_heads
    shapes = {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(config.num_hidden_layers):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            out[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) / fan_in**0.5
            out[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * scale
    return out


def tokens_per_s(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    results = fn()
    seconds = time.perf_counter() - t0
    tokens = sum(len(c) for res in results for c in res.completion_ids)
    return tokens / seconds, tokens


def gpu_used_gib() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1b")
    ap.add_argument("--model", default=None, help="use this model directory instead of building a random one")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per group")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--publish-rounds", type=int, default=5)
    ap.add_argument("--gpu-mem", type=float, default=0.35, help="gpu_memory_utilization of each vLLM engine")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--hf-prompts", type=int, default=2, help="prompts per group in the hf slice")
    ap.add_argument("--hf-tokens", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig

    from engine.models.random import build_random_llama
    from engine.rollout.types import RolloutRequest
    from engine.rollout.vllm import VLLMRollout, build_llm, run_requests

    t_start = time.time()
    path = args.model or str(
        build_random_llama(f"/tmp/lorapop-random-{args.size}", args.size, seed=0, vocab_size=32768)
    )
    config = AutoConfig.from_pretrained(path)
    n_params = json.load(open(f"{path}/lorapop_random_model.json"))["parameters"] if not args.model else None
    print(f"model {path}: {n_params} parameters ({time.time() - t_start:.0f}s)", flush=True)
    torch.cuda.init()
    names = [f"g{i}" for i in range(args.groups)]
    rng = random.Random(0)
    prompts = {
        g: [[rng.randrange(256) for _ in range(rng.randrange(64, 193))] for _ in range(args.prompts)] for g in names
    }
    lora = {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0, "target_modules": "all-linear"}
    common = {"max_model_len": 1024, "max_num_seqs": args.max_num_seqs}

    def requests(adapters: int, per_group: int, tokens: int) -> list[RolloutRequest]:
        """Every group's prompts; group i's prompts go to adapter i % adapters (so the work is the same)."""
        return [
            RolloutRequest(
                names[k % adapters],
                prompts[g][:per_group],
                n=args.group_size,
                max_new_tokens=tokens,
                temperature=1.0,
                seed=k,
            )
            for k, g in enumerate(names)
        ]

    # 1. engines: base-only and multi-LoRA, side by side on one GPU
    used0 = gpu_used_gib()
    t0 = time.perf_counter()
    base = build_llm(path, lora_rank=None, gpu_memory_utilization=args.gpu_mem, **common)
    base_start, used1 = time.perf_counter() - t0, gpu_used_gib()
    t0 = time.perf_counter()
    svc = VLLMRollout(path, {g: lora for g in names}, gpu_memory_utilization=args.gpu_mem, ignore_eos=True, **common)
    lora_start, used2 = time.perf_counter() - t0, gpu_used_gib()
    kv = {}
    for key, llm in (("base", base), ("lora", svc.llm)):
        cc = llm.llm_engine.vllm_config.cache_config
        kv[key] = (cc.num_gpu_blocks or 0) * cc.block_size
    print(
        f"engines up: base {base_start:.0f}s, lora {lora_start:.0f}s; GPU used {used0:.1f} -> {used1:.1f} -> {used2:.1f} GiB",
        flush=True,
    )

    # 2. publish: every group, several rounds (what each optimizer step costs)
    publish = []
    for rnd in range(args.publish_rounds):
        for k, g in enumerate(names):
            state = random_lora_state(config, args.rank, seed=1000 * rnd + k)
            svc.publish(g, rnd, state)
            publish.append(svc.last_publish)
    lora_bytes = sum(v.numel() * 2 for v in random_lora_state(config, args.rank, 0).values())
    pub = {k: statistics.median(p[k] for p in publish[len(names) :] or publish) * 1e3 for k in publish[0]}
    print(f"publish (median of {len(publish)}, first round excluded): {pub}", flush=True)

    # 3. throughput, interleaved
    variants = {
        "vLLM base-only (no LoRA)": lambda: run_requests(
            base, requests(1, args.prompts, args.tokens), lambda g: None, ignore_eos=True
        ),
        "vLLM 1 adapter": lambda: svc.generate(requests(1, args.prompts, args.tokens)),
        "vLLM mixed, 4 adapters": lambda: svc.generate(requests(4, args.prompts, args.tokens)),
        "vLLM mixed, 8 adapters": lambda: svc.generate(requests(min(8, args.groups), args.prompts, args.tokens)),
    }
    runs: dict[str, list[float]] = {v: [] for v in variants}
    tokens: dict[str, int] = {}
    for fn in variants.values():  # warm-up
        fn()
    order = list(variants)
    for rep in range(args.repeats):
        for v in order[rep % len(order) :] + order[: rep % len(order)]:
            tps, tokens[v] = tokens_per_s(variants[v])
            runs[v].append(tps)
            print(f"  rep {rep} {v}: {tps:.0f} tok/s", flush=True)

    # 4. hf backend on a slice, with vLLM mixed-8 on the same slice
    hf_rows = {}
    try:
        hf_rows = bench_hf(path, names, lora, config, args, requests, svc)
    except Exception as e:  # the table still reports vLLM
        print(f"hf backend failed: {type(e).__name__}: {e}", flush=True)

    ref = statistics.median(runs["vLLM base-only (no LoRA)"])
    rows = []
    for v, xs in runs.items():
        m = statistics.median(xs)
        rows.append((v, f"{m:,.0f}", f"{m / ref:.3f}", f"{min(xs):,.0f}-{max(xs):,.0f}", tokens[v]))
    device = torch.cuda.get_device_name()
    print(
        f"\n{device}; {args.size} random Llama ({n_params} params); {args.groups} groups x {args.prompts} prompts x "
        f"{args.group_size} samples = {args.groups * args.prompts * args.group_size} completions of {args.tokens} tokens; "
        f"rank {args.rank}; max_num_seqs {args.max_num_seqs}; {args.repeats} interleaved repeats (median)\n"
    )
    print("| variant | output tokens/s | ratio to base-only | runs (min-max) | tokens per run |")
    print("| --- | ---: | ---: | --- | ---: |")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    for v, (tps, n) in hf_rows.items():
        print(f"| {v} | {tps:,.0f} | - | - | {n} |")
    print(
        f"\nGPU memory: base engine {used1 - used0:.1f} GiB (KV capacity {kv['base']:,} tokens); LoRA engine "
        f"{used2 - used1:.1f} GiB (KV capacity {kv['lora']:,} tokens; {args.groups} LoRA slots of rank "
        f"{args.rank}: {args.groups * lora_bytes / 2**20:.0f} MiB bf16)"
    )
    print(
        f"publish per group (rank {args.rank}, {lora_bytes / 2**20:.1f} MiB bf16): total {pub['total_s']:.1f} ms "
        f"(write {pub['write_s']:.1f} ms, vLLM load {pub['load_s']:.1f} ms), median of {len(publish) - len(names)}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "device": device,
                    "params": n_params,
                    "runs": runs,
                    "tokens": tokens,
                    "hf": hf_rows,
                    "publish_ms": pub,
                    "publish_all": publish,
                    "gpu_used_gib": [used0, used1, used2],
                    "kv_tokens": kv,
                    "engine_start_s": [base_start, lora_start],
                    "date": time.strftime("%Y-%m-%d"),
                },
                f,
                indent=1,
            )
    svc.close()


def bench_hf(path, names, lora, config, args, requests, svc) -> dict[str, tuple[float, int]]:
    """The hf backend (PEFT mixed adapters) moved to the GPU in bf16, and vLLM on the same slice."""
    import torch

    from engine.rollout.hf import HFRollout

    hf = HFRollout(path, {g: lora for g in names}, num_threads=8)
    for k, g in enumerate(names):
        hf.publish(g, 0, random_lora_state(config, args.rank, seed=k))
    hf.model.to("cuda", torch.bfloat16)
    generate = hf.model.generate

    def on_gpu(**kw):  # HFRollout builds its inputs on the CPU
        return generate(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()})

    hf.model.generate = on_gpu
    reqs = requests(min(8, args.groups), args.hf_prompts, args.hf_tokens)
    # hf stops a row at eos; the random 32k-vocab model almost never emits it, so the work matches
    hf.generate(reqs)
    hf_tps, hf_n = tokens_per_s(functools.partial(hf.generate, reqs))
    svc.generate(reqs)
    v_tps, v_n = tokens_per_s(lambda: svc.generate(reqs))
    n = len(reqs) * args.hf_prompts * args.group_size
    del hf
    torch.cuda.empty_cache()
    return {
        f"hf backend, mixed 8 adapters, GPU bf16 ({n} completions x {args.hf_tokens} tokens)": (hf_tps, hf_n),
        f"vLLM mixed 8 adapters, same slice ({n} x {args.hf_tokens})": (v_tps, v_n),
    }


if __name__ == "__main__":
    main()
