"""builtin:tiny: byte-level tokenizer, chat template, HF directory, deterministic cached build."""

from __future__ import annotations

import torch

from engine.models.tiny import build_tokenizer, ensure_tiny_model, settings_key

SMALL = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "copy_steps": 2,
    "copy_lr": 1e-3,
    "sft_steps": 3,
    "sft_lr": 1e-3,
    "strict_fraction": 0.35,
    "seed": 0,
}


def test_byte_level_tokenizer_round_trips_any_text():
    tok = build_tokenizer()
    for text in ["Xin chào, thế giới! Tính 12 + 7 = ?", "emoji 🙂 and tabs\t", "<think>3+5=8</think>"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte
        assert tok.decode(ids) == text


def test_chat_template_and_specials():
    tok = build_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id not in ids


def test_build_is_cached_deterministic_and_loads_with_auto_classes(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LORAPOP_CACHE", str(tmp_path / "a"))
    logs: list[str] = []
    first = ensure_tiny_model(SMALL, log=logs.append)
    built = [m for m in logs if m.startswith("built ")]
    assert first.name == f"tiny-{settings_key(SMALL)}" and len(built) == 1  # built once, progress shown
    assert any("copy phase: step 2/2" in m for m in logs) and any("format phase: step 3/3" in m for m in logs)
    n = len(logs)
    assert ensure_tiny_model(SMALL, log=logs.append) == first and len(logs) == n  # then cached
    monkeypatch.setenv("LORAPOP_CACHE", str(tmp_path / "b"))
    second = ensure_tiny_model(SMALL, log=logs.append)
    m1 = AutoModelForCausalLM.from_pretrained(first)
    m2 = AutoModelForCausalLM.from_pretrained(second)
    assert m1.config.model_type == "llama"
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    tok = AutoTokenizer.from_pretrained(first)
    assert tok.decode(tok("thế giới", add_special_tokens=False)["input_ids"]) == "thế giới"
    assert settings_key({**SMALL, "seed": 1}) != settings_key(SMALL)
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp-" in p.name]  # no half-built directory left


def test_builtin_tiny_is_the_shipped_build_and_nothing_is_built(tmp_path, monkeypatch):
    """The default settings resolve to the weights in the package (same on every host), with no build
    and nothing written to the cache; the manifest says they come from this recipe and are intact."""
    import hashlib
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.config.schema import TinyModelConfig
    from engine.models.base import resolve_base_model
    from engine.models.tiny import BUILD_VERSION, MANIFEST, SHIPPED_DIR

    monkeypatch.setenv("LORAPOP_CACHE", str(tmp_path / "cache"))
    logs: list[str] = []
    assert resolve_base_model("builtin:tiny", TinyModelConfig().model_dump(), log=logs.append) == str(SHIPPED_DIR)
    assert logs == [] and not (tmp_path / "cache").exists()
    manifest = json.loads((SHIPPED_DIR / MANIFEST).read_text())
    # a recipe change (TinyModelConfig defaults, BUILD_VERSION) without `lorapop build-tiny` fails here
    assert manifest["build_version"] == BUILD_VERSION
    assert manifest["settings"] == TinyModelConfig().model_dump()
    assert manifest["settings_key"] == settings_key(TinyModelConfig().model_dump())
    assert hashlib.sha256((SHIPPED_DIR / "model.safetensors").read_bytes()).hexdigest() == manifest["model_sha256"]
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    tok = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    assert model.config.hidden_size == TinyModelConfig().hidden_size and tok.chat_template
    # other settings are still built on first use (into the cache), not taken from the package
    assert resolve_base_model("builtin:tiny", SMALL, log=logs.append) != str(SHIPPED_DIR)
    assert any(m.startswith("built builtin:tiny") for m in logs)


def test_build_tiny_command_writes_a_model_and_its_manifest(tmp_path):
    import json

    from tests.conftest import run_cli

    out = tmp_path / "tiny"
    args = [f"{k}={v}" for k, v in SMALL.items()]
    proc = run_cli("build-tiny", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "lorapop_build.json").read_text())
    assert manifest["settings_key"] == settings_key(SMALL)  # SMALL sets every TinyModelConfig field
    assert manifest["cpu_capability"] and (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert "format phase: step 3/3" in proc.stderr  # progress is shown
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny"]  # built beside, renamed into place

    proc = run_cli("build-tiny", "hidden_size=zero", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "hidden_size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_build_shows_each_phase_and_its_progress_every_few_seconds(tmp_path, monkeypatch):
    """A first build says what it is doing: the model, then each phase with its step, loss and time, at
    most one line per PROGRESS_EVERY_S seconds (here a clock that moves 1 s a step) plus the last step."""
    import re

    import engine.models.tiny as tiny

    ticks = iter(range(10_000))
    monkeypatch.setattr(tiny, "_clock", lambda: float(next(ticks)))  # called once at a phase's start, once a step
    monkeypatch.setattr(tiny, "PROGRESS_EVERY_S", 4.0)
    logs: list[str] = []
    tiny.build_tiny_model(tmp_path / "m", **{**SMALL, "copy_steps": 10, "sft_steps": 3}, log=logs.append)
    assert re.fullmatch(
        r"  model: Llama, 1 layers x 32 hidden, [0-9.]+M parameters; byte-level tokenizer, 259 tokens", logs[0]
    ), logs[0]
    losses = [float(x) for m in logs for x in re.findall(r"loss (\d+\.\d+)", m)]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)
    assert [re.sub(r"loss \d+\.\d+", "loss L", m) for m in logs[1:]] == [
        "  copy phase (1 of 2): 10 steps of 32 plain-text rows, lr 0.001",
        "  copy phase: step 4/10, loss L, 4s elapsed, ~6s to go",
        "  copy phase: step 8/10, loss L, 8s elapsed, ~2s to go",
        "  copy phase: step 10/10, loss L, done in 10s",
        "  format phase (2 of 2): 3 steps of 16 chat rows, lr 0.001",
        "  format phase: step 3/3, loss L, done in 3s",
        "  saving model and tokenizer",
    ]
