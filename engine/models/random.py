"""Randomly initialised Llama-architecture models of a chosen size, for benchmarks (no downloads).

    python -m engine.models.random OUT_DIR --size 1b [--vocab-size 32768] [--seed 0]

Writes an ordinary Hugging Face directory (``config.json``, bf16 ``model.safetensors``, the built-in
byte-level tokenizer of ``builtin:tiny`` with its ChatML chat template), which transformers, PEFT
and vLLM all load. The weights are random: the text is noise, but every matmul, attention and LoRA
kernel does the work of a real model of that size, which is what throughput benchmarks need.

``vocab_size`` may exceed the tokenizer's 259 tokens (byte tokens + ChatML specials): real models
have 32k-150k tokens, and the lm_head and sampler cost scales with it. Token ids past the
tokenizer's range are valid for the model; nothing here detokenizes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Dims follow well-known shapes: "1b" is TinyLlama-1.1B's body (2048 wide, 22 layers, GQA 32/4);
# "0.5b" sits between Qwen2.5-0.5B and Llama-3.2-1B. Parameter counts with vocab 32768, tied embeddings.
SIZES: dict[str, dict[str, int]] = {
    "0.5b": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "num_hidden_layers": 20,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
    },  # ~0.55B
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },  # ~1.03B
}


def llama_dims(size: str | dict[str, int]) -> dict[str, int]:
    """Named size -> Llama dims; a dict gives custom dims (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``; optional ``intermediate_size`` (default 3x hidden) and
    ``num_key_value_heads`` (default = heads))."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r} (known: {', '.join(SIZES)}, or a dict of dims)")
        return dict(SIZES[size])
    dims = dict(size)
    missing = {"hidden_size", "num_hidden_layers", "num_attention_heads"} - set(dims)
    if missing:
        raise ValueError(f"custom size needs {sorted(missing)}")
    dims.setdefault("intermediate_size", 3 * dims["hidden_size"])
    dims.setdefault("num_key_value_heads", dims["num_attention_heads"])
    return dims


def build_random_llama(
    out_dir: str | Path,
    size: str | dict[str, int] = "0.5b",
    seed: int = 0,
    vocab_size: int | None = None,
    initializer_range: float = 0.02,
    max_position_embeddings: int = 4096,
    device: str | None = None,
) -> Path:
    """Write a random ``LlamaForCausalLM`` (bf16) + byte-level tokenizer to ``out_dir``; returns it.

    ``vocab_size``: None -> the tokenizer's size; larger pads the embedding like a real vocabulary.
    ``initializer_range``: std of the random weights; larger gives peakier next-token
    distributions (tests use that so greedy decoding is not decided by rounding noise).
    ``device``: where to initialise (``cuda`` is much faster for 1B); default cuda when available.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models.quiet import quiet_libraries
    from engine.models.tiny import build_tokenizer

    quiet_libraries()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    vocab = max(vocab_size or 0, len(tok))
    dims: dict[str, Any] = llama_dims(size)  # all int; mypy cannot match a dict's keys to LlamaConfig's parameters
    config = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        rope_theta=10000.0,  # type: ignore[call-arg]  # transformers 5 takes it into rope_parameters; 4.x names it
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **dims,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # HF init: normal(0, initializer_range), norms at 1
    model.to(torch.bfloat16).eval()  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to): mypy sees it unbound
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {
        "size": size,
        "seed": seed,
        "vocab_size": vocab,
        "initializer_range": initializer_range,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "lorapop_random_model.json").write_text(json.dumps(info, indent=2))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # hand the init's memory back before an inference engine measures what is free
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="0.5b", choices=sorted(SIZES))
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = build_random_llama(args.out_dir, args.size, seed=args.seed, vocab_size=args.vocab_size)
    print(json.loads((path / "lorapop_random_model.json").read_text()))


if __name__ == "__main__":
    main()
