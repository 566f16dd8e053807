"""``builtin:tiny``: a small Llama-architecture model with a byte-level tokenizer, built offline.

Build (once per settings, cached on disk):
  1. a byte-level BPE tokenizer with no merges (every UTF-8 byte is a token, so any text works,
     Vietnamese included) plus ChatML special tokens and a chat template;
  2. a randomly initialised ``LlamaForCausalLM`` of the configured size;
  3. a short supervised "format phase" on the built-in arithmetic task, the pre-SFT step that GRPO
     recipes for base models use. Only ``strict_fraction`` of the targets use the exact answer
     format; the rest use looser variants (no reasoning tags, no answer tags, plain prose), so the
     model starts out following the format part of the time and GRPO has something to learn.

The result is an ordinary Hugging Face directory (``AutoModelForCausalLM`` / ``AutoTokenizer``).
Cache: ``$LORAPOP_CACHE`` or ``~/.cache/lorapop``, one directory per settings hash, written whole
and renamed into place under a file lock, so concurrent builders never see half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BUILD_VERSION = 1  # bump when the recipe changes: old cache entries are then ignored
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("LORAPOP_CACHE", Path.home() / ".cache" / "lorapop"))


def settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps({"build_version": BUILD_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_tiny_model(settings: dict[str, Any], log=print) -> Path:
    """Return the directory of the tiny model for ``settings`` (a ``TinyModelConfig`` dump), building it if needed."""
    return build_cached(f"tiny-{settings_key(settings)}", lambda out: build_tiny_model(out, **settings),
                        "builtin:tiny", log)


def build_cached(name: str, build: Callable[[Path], None], label: str, log=print) -> Path:
    """``cache_root() / name``, built by ``build(tmp_dir)`` on first use: under a file lock, into a
    temporary directory renamed into place, so concurrent builders never see half a model."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if (target / "config.json").is_file():
        return target
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=root))
        try:
            t0 = time.time()
            log(f"building {label} (one-off, cached in {target}) ...")
            build(tmp)
            os.replace(tmp, target)
            log(f"built {label} in {time.time() - t0:.0f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel pre-tokenizes to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def build_tokenizer():
    """A byte-level tokenizer: 256 byte tokens + ChatML specials, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()  # token id == byte value
    assert set(b2u.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_special_tokens({"pad_token": "<|pad|>", "eos_token": "<|im_end|>", "bos_token": "<|im_start|>"})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _format_variants(env, row: dict) -> list[str]:
    """The exact answer format first, then looser variants a half-trained model would produce."""
    r, a = row["reasoning"], row["answer"]
    return [
        env.solution_text(row),
        f"{env.solution_start}{a}{env.solution_end}",
        f"{env.reasoning_start}{r}{env.reasoning_end} {a}",
        f"{r}. The answer is {a}.",
    ]


def build_tiny_model(out: Path, hidden_size: int, num_layers: int, num_heads: int, sft_steps: int,
                     sft_lr: float, strict_fraction: float, seed: int) -> None:
    """Build, format-train and save the tiny model into ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models import quiet_libraries
    from envs.arithmetic import ArithmeticEnv

    quiet_libraries()
    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    envs = [ArithmeticEnv(seed=seed + 7919 * d, difficulty=d) for d in (1, 2, 3, 4)]
    pick = random.Random(f"tiny-sft:{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / max(sft_steps, 1)))
    batch_size = 16
    model.train()
    for step in range(sft_steps):
        ids, labels = [], []
        for env in envs:
            for row in env.batch(step, batch_size // len(envs)):
                variants = _format_variants(env, row)
                target = variants[0] if pick.random() < strict_fraction else pick.choice(variants[1:])
                p = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
                p_ids = tok(p, add_special_tokens=False)["input_ids"]
                t_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                ids.append(p_ids + t_ids)
                labels.append([-100] * len(p_ids) + t_ids)
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
        label_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=label_t).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
