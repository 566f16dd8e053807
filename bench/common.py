"""Set-up shared by the hf benchmarks: builtin:tiny, a rollout service with one perturbed adapter per
group, and one request per group over a built-in task's prompts."""

from __future__ import annotations

import argparse

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def batch_args(description: str, groups: int) -> argparse.Namespace:
    """The batch-shape flags every hf benchmark takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--groups", type=int, default=groups)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    return ap.parse_args()


def tiny_service(groups: int):
    """``(model_path, HFRollout, group names)``: every group's adapter published with small random weights."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    from engine.config.schema import TinyModelConfig
    from engine.models.base import load_base, peft_lora_config
    from engine.models.tiny import ensure_tiny_model
    from engine.rollout.hf import HFRollout

    path = str(ensure_tiny_model(TinyModelConfig().model_dump()))
    names = [f"group{i}" for i in range(groups)]
    svc = HFRollout(path, {n: LORA for n in names})
    for i, n in enumerate(names):
        torch.manual_seed(i)
        m = get_peft_model(load_base(path), peft_lora_config(**LORA))
        svc.publish(n, 0, {k: v + 0.02 * torch.randn_like(v) for k, v in get_peft_model_state_dict(m).items()})
    return path, svc, names


def task_requests(svc, names: list[str], make_env, args: argparse.Namespace) -> list:
    """One ``RolloutRequest`` per group: ``args.prompts`` rows of ``make_env(i)``, ``args.group_size`` samples each."""
    from engine.rollout.types import RolloutRequest

    tok = svc.tokenizer
    requests = []
    for i, n in enumerate(names):
        rows = make_env(i).batch(0, args.prompts)
        ids = [
            tok(
                tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            )["input_ids"]
            for r in rows
        ]
        requests.append(RolloutRequest(n, ids, args.group_size, args.tokens, seed=i))
    return requests
