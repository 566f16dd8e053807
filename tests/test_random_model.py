"""The random benchmark models: a tiny custom size builds, loads with transformers and generates."""

from __future__ import annotations

import json

import pytest

from engine.models.random import SIZES, build_random_llama, llama_dims


def count_parameters(dims: dict, vocab_size: int) -> int:
    """Parameters of a tied-embedding Llama with these dims, counted by hand (what the sizes promise)."""
    h, i, n = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    kv = h // dims["num_attention_heads"] * dims["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return vocab_size * h + n * per_layer + h


def test_named_sizes_are_what_they_say():
    assert 0.45e9 < count_parameters(llama_dims("0.5b"), 32768) < 0.65e9
    assert 0.9e9 < count_parameters(llama_dims("1b"), 32768) < 1.2e9
    with pytest.raises(ValueError):
        llama_dims("7b")
    with pytest.raises(ValueError):
        llama_dims({"hidden_size": 64})


def test_custom_size_builds_and_loads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dims = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    path = build_random_llama(tmp_path / "m", dims, seed=3, vocab_size=300, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == 300 and model.config.num_hidden_layers == 2
    assert model.dtype == torch.bfloat16  # saved in bf16
    n = json.loads((path / "lorapop_random_model.json").read_text())["parameters"]
    assert n == count_parameters(llama_dims(dims), 300) == sum(p.numel() for p in model.parameters())
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    p = ids.shape[1]
    assert out.shape[0] == 1 and torch.equal(out[0, :p], ids[0])  # the prompt, then what the model generated
    new = out[0, p:].tolist()
    assert model.generation_config.eos_token_id == tok.eos_token_id  # what generation stops at
    assert len(new) == 4 or (1 <= len(new) < 4 and new[-1] == tok.eos_token_id)  # 4 new tokens, or stopped at eos
    assert all(0 <= t < 300 for t in new)  # ids of the model's own vocabulary
    # same seed, same weights
    again = build_random_llama(tmp_path / "m2", dims, seed=3, vocab_size=300, device="cpu")
    a, b = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (path, again))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sizes_table_has_valid_heads():
    for dims in SIZES.values():
        assert dims["hidden_size"] % dims["num_attention_heads"] == 0
        assert (dims["hidden_size"] // dims["num_attention_heads"]) in (
            64,
            128,
        )  # head dims every attention backend supports
