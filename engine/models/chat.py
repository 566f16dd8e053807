"""Talk to a trained group on the CPU (transformers, no vLLM): ``lorapop chat runs/<run> --group NAME``,
or ``--group auto`` to let a router pick the group whose domain fits each prompt.

Each prompt is sent as the group's env sent its training prompts: a chat with the env's system prompt
(unless one is given), through the base's chat template, to the group's adapter on its base.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path


def group_system_prompt(run_dir: str | Path, group: str) -> str | None:
    """The system prompt group ``group``'s env puts before its questions (None: it has none)."""
    from engine.config.builders import build_env
    from engine.config.loading import ConfigError
    from engine.config.schema import DatasetEnvConfig, GameEnvConfig
    from engine.models.adapters import run_plans

    plans = run_plans(run_dir)
    if group not in plans:
        raise ConfigError(f"{run_dir}: no group {group!r} (groups: {sorted(plans)})")
    plan = plans[group]
    if isinstance(plan.env, GameEnvConfig):
        return None  # a game agent's prompts come from its game
    if isinstance(plan.env, DatasetEnvConfig):
        return plan.env.system_prompt  # (without loading the dataset, which may not be on this machine)
    return getattr(build_env(plan.env, plan.seed, plan.tags, plan.eval_seed), "system_prompt", None)


def chat(
    run_dir: str | Path,
    group: str,
    prompts: Iterable[str],
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> Iterator[tuple[str, str]]:
    """``(group, reply)`` for each of ``prompts`` (greedy at temperature 0), as they come. With
    ``group="auto"`` each prompt goes to the group whose domain fits it (engine/models/router.py)."""
    import torch

    from engine.config.loading import ConfigError
    from engine.models.adapters import load_group_model

    if not (Path(run_dir) / "run.json").is_file():
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no run.json)")
    router = None
    if group == "auto":
        from engine.models.router import run_router

        router = run_router(run_dir)
    loaded: dict[str, tuple] = {}  # group -> (model, tokenizer, system prompt)
    for prompt in prompts:
        g = router.route(prompt) if router is not None else group
        if g not in loaded:
            model, tok = load_group_model(run_dir, g)
            loaded[g] = (model.eval(), tok, system if system is not None else group_system_prompt(run_dir, g))
        model, tok, sys_prompt = loaded[g]
        messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        torch.manual_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **sampling,
            )
        yield g, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
