"""Base-model resolution and loading, and the PEFT LoRA config built from plain arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.quiet import quiet_libraries


def resolve_base_model(base_model: str, tiny_settings: dict[str, Any], log=print) -> str:
    """``builtin:tiny`` -> its cached directory (built on first use); a local directory -> its path; a hub
    id already in the Hugging Face cache -> the id. Anything else is an error naming ``base_model``
    (nothing is downloaded)."""
    if base_model.startswith("builtin:"):
        name = base_model.split(":", 1)[1]
        if name.startswith("random-"):
            return str(ensure_random_model(name.removeprefix("random-"), log=log))
        if name != "tiny":
            raise ValueError(
                f"base_model: unknown built-in model {base_model!r} "
                "(known: builtin:tiny, builtin:random-0.5b, builtin:random-1b)"
            )
        from engine.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model(tiny_settings, log=log))
    path = Path(base_model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"base_model: {path} is not a Hugging Face model directory (no config.json)")
        return str(path.resolve())
    if _in_hf_cache(base_model):
        return base_model  # a hub id already downloaded: from_pretrained loads it offline
    raise ValueError(
        f"base_model: {base_model!r} is not a directory, a builtin:* model, or a model in the "
        f"Hugging Face cache (lorapop downloads nothing: download it first, or give its directory)"
    )


def _in_hf_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s config.json (so it loads without the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid repo id
        return False


def ensure_random_model(size: str, log=print) -> Path:
    """``builtin:random-<size>``: a randomly initialised Llama of that size (benchmarks; nothing to
    download), built once into the tiny model's cache root."""
    from engine.models.random import SIZES, build_random_llama
    from engine.models.tiny import build_cached

    if size not in SIZES:
        raise ValueError(f"base_model: unknown random model size {size!r} (known: {', '.join(SIZES)})")
    return build_cached(f"random-{size}", lambda out: build_random_llama(out, size), f"builtin:random-{size}", log)


def torch_runtime() -> str:
    """How this process's torch computes: version, CPU kernels (``ATEN_CPU_CAPABILITY``) and threads."""
    import torch

    return (
        f"torch {torch.__version__}, cpu kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    quiet_libraries()

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt's token ids as the model sees them: a conversation through the chat template (with the
    generation prompt), a plain string as it is."""
    text = (
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        if isinstance(prompt, list)
        else prompt
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load_base(path: str, dtype: str = "float32", device: str = "cpu"):
    """The frozen base model in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model = model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to): mypy sees it unbound
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def peft_lora_config(r: int, alpha: int, dropout: float, target_modules: list[str] | str):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM", bias="none"
    )
