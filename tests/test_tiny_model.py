"""builtin:tiny: byte-level tokenizer, chat template, HF directory, deterministic cached build."""

from __future__ import annotations

import torch

from engine.tiny_model import build_tokenizer, ensure_tiny_model, settings_key

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "copy_steps": 2, "copy_lr": 1e-3, "sft_steps": 3, "sft_lr": 1e-3,
         "strict_fraction": 0.35, "seed": 0}


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
    assert first.name == f"tiny-{settings_key(SMALL)}" and len(logs) == 2  # built once
    assert ensure_tiny_model(SMALL, log=logs.append) == first and len(logs) == 2  # then cached
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
