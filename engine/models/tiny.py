"""``builtin:tiny``: a small Llama-architecture model with a byte-level tokenizer, built offline.

Build (once per settings, cached on disk):
  1. a byte-level BPE tokenizer with no merges (every UTF-8 byte is a token, so any text works,
     Vietnamese included) plus ChatML special tokens and a chat template;
  2. a randomly initialised ``LlamaForCausalLM`` of the configured size;
  3. a "copy phase" on plain text (repeat a sequence, recall a key's value), so the model forms
     the in-context copy heads that a real pre-trained model has: without them its answers never
     depend on its prompt and GRPO has nothing input-dependent to reinforce;
  4. a short supervised "format phase" on the built-in arithmetic task (plus chat-form recall rows),
     the pre-SFT step that GRPO recipes for base models use. Only ``strict_fraction`` of the
     arithmetic targets use the exact answer format; the rest use looser variants (no reasoning
     tags, no answer tags, plain prose), so the model starts out following the format part of the
     time and GRPO has something to learn.

Data of both phases: engine/models/tiny_corpus.py.

The result is an ordinary Hugging Face directory (``AutoModelForCausalLM`` / ``AutoTokenizer``).

Shipped: the build of the default settings (``TinyModelConfig()``) lies in the package
(``engine/models/assets/builtin-tiny``, ~3.6 MB) with a ``lorapop_build.json`` manifest (settings, their key,
torch version, CPU kernels, sha256), so ``builtin:tiny`` loads at once and is the same model on
every host: a build depends on the host's CPU kernels (AVX-512 and AVX2 builds differ bit-wise and
learn differently). Reproduce or change it with

    lorapop build-tiny                     # rewrites engine/models/assets/builtin-tiny from TinyModelConfig()
    ATEN_CPU_CAPABILITY=avx2 lorapop build-tiny --out /tmp/tiny-avx2   # another host's kernels

Other settings are built on first use and cached: ``$LORAPOP_CACHE`` or ``~/.cache/lorapop``, one
directory per settings hash, written whole and renamed into place under a file lock, so concurrent
builders never see half a model.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUILD_VERSION = 2  # bump when the recipe changes: old cache entries (and the shipped build) are then ignored
PROGRESS_EVERY_S = 5.0  # a training phase logs its step and loss at most this often (and at its last step)
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "builtin-tiny"
MANIFEST = "lorapop_build.json"
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
    """The directory of the tiny model for ``settings`` (a ``TinyModelConfig`` dump): the shipped build
    when the settings are its own, else a cached build (built on first use)."""
    shipped = shipped_tiny_model(settings)
    if shipped is not None:
        return shipped
    return build_cached(
        f"tiny-{settings_key(settings)}", lambda out: build_tiny_model(out, **settings, log=log), "builtin:tiny", log
    )


def shipped_tiny_model(settings: dict[str, Any]) -> Path | None:
    """The build shipped in the package, if it was built from ``settings`` by this recipe version."""
    manifest = SHIPPED_DIR / MANIFEST
    if not manifest.is_file():
        return None
    return SHIPPED_DIR if json.loads(manifest.read_text())["settings_key"] == settings_key(settings) else None


def write_build(out: Path, settings: dict[str, Any], log=print) -> dict[str, Any]:
    """Build the tiny model for ``settings`` into ``out`` (replaced whole: built beside it, then renamed)
    with a manifest that says how; returns the manifest."""
    import torch

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        t0 = time.time()
        build_tiny_model(tmp, **settings, log=log)
        manifest = {
            "build_version": BUILD_VERSION,
            "settings": settings,
            "settings_key": settings_key(settings),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
            "build_seconds": round(time.time() - t0, 1),
            "model_sha256": hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private: the package's copy is read by every user
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def build_cached(name: str, build: Callable[[Path], object], label: str, log=print) -> Path:
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
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
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


def _train_phase(model, batches, steps: int, lr: float, decay: bool, label: str, log, every_s: float) -> None:
    """AdamW over ``steps`` batches of ``(prompt_ids, target_ids)`` pairs; loss on the targets only.
    20 warm-up steps, then constant (``decay=False``) or linear decay to 10% of ``lr``. Logs the step,
    loss, elapsed and estimated remaining seconds at most every ``every_s`` seconds, and the last step."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    shape = (lambda s: max(0.1, 1 - s / max(steps, 1))) if decay else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * shape(s))
    pad = model.config.pad_token_id
    model.train()
    t0 = last = _clock()
    for step in range(steps):
        pairs = batches(step)
        seqs = [p + t for p, t in pairs]
        width = max(len(x) for x in seqs)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs])  # [B, L]
        labels = torch.tensor([[-100] * len(p) + t + [-100] * (width - len(p) - len(t)) for p, t in pairs])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in seqs])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        now = _clock()
        if step + 1 == steps or now - last >= every_s:
            last, elapsed = now, now - t0
            when = (
                f"done in {elapsed:.0f}s"
                if step + 1 == steps
                else f"{elapsed:.0f}s elapsed, ~{elapsed / (step + 1) * (steps - step - 1):.0f}s to go"
            )
            log(f"  {label} phase: step {step + 1}/{steps}, loss {loss.item():.3f}, {when}")


def _clock() -> float:
    """Seconds for progress lines (a function of its own so tests can step time by hand)."""
    return time.monotonic()


def build_tiny_model(
    out: Path,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    copy_steps: int,
    copy_lr: float,
    sft_steps: int,
    sft_lr: float,
    strict_fraction: float,
    seed: int,
    log=print,
) -> None:
    """Build, pre-train (copy phase, then format phase; see engine/models/tiny_corpus.py) and save into ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models import tiny_corpus as corpus
    from engine.models.quiet import quiet_libraries
    from envs.arithmetic import ArithmeticEnv

    quiet_libraries()
    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    log(
        f"  model: Llama, {num_layers} layers x {hidden_size} hidden, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; byte-level tokenizer, {len(tok)} tokens"
    )

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    def chat(messages: list[dict]) -> list[int]:
        return ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    # Phase 1, copy: plain text, every target token a copy from the prompt (32 rows a step).
    copy_rng = random.Random(f"tiny-copy:{seed}")

    def copy_batch(step: int) -> list[tuple[list[int], list[int]]]:
        rows = [corpus.copy_example(copy_rng) for _ in range(32)]
        return [(ids(prompt + "\n"), ids(target) + [tok.eos_token_id]) for prompt, target in rows]

    log(f"  copy phase (1 of 2): {copy_steps} steps of 32 plain-text rows, lr {copy_lr:g}")
    _train_phase(model, copy_batch, copy_steps, copy_lr, decay=False, label="copy", log=log, every_s=PROGRESS_EVERY_S)

    # Phase 2, format: 2 arithmetic rows per difficulty + 8 recall rows a step, chat template.
    envs = [ArithmeticEnv(seed=seed + 7919 * d, difficulty=d) for d in (1, 2, 3, 4)]
    recall_format = envs[0]  # recall rows use the arithmetic task's tags and exact format
    pick = random.Random(f"tiny-sft:{seed}")
    recall_rng = random.Random(f"tiny-recall:{seed}")

    def format_batch(step: int) -> list[tuple[list[int], list[int]]]:
        rows = [
            (row, corpus.arithmetic_targets(env, row), strict_fraction) for env in envs for row in env.batch(step, 2)
        ]
        for _ in range(8):
            row = corpus.recall_row(recall_rng, recall_format.solution_start, recall_format.solution_end)
            rows.append((row, corpus.recall_targets(recall_format, row), corpus.RECALL_STRICT_FRACTION))
        return [
            (chat(row["prompt"]), ids(corpus.pick_target(pick, variants, strict)) + [tok.eos_token_id])
            for row, variants, strict in rows
        ]

    log(f"  format phase (2 of 2): {sft_steps} steps of 16 chat rows, lr {sft_lr:g}")
    _train_phase(model, format_batch, sft_steps, sft_lr, decay=True, label="format", log=log, every_s=PROGRESS_EVERY_S)
    log("  saving model and tokenizer")
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
