"""The hf rollout backend: adapters per group in one batch, publishing, seeds, log-probs."""

from __future__ import annotations

import pytest
import torch

from engine.rollout.hf import HFRollout
from engine.rollout.types import RolloutRequest

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def lora_state(model_path: str, seed: int, scale: float) -> dict:
    """A LoRA state dict with non-zero B, so the adapter changes the model."""
    from peft import get_peft_model, get_peft_model_state_dict

    from engine.models.base import load_base, peft_lora_config

    torch.manual_seed(seed)
    m = get_peft_model(load_base(model_path), peft_lora_config(**LORA))
    return {k: v + scale * torch.randn_like(v) for k, v in get_peft_model_state_dict(m).items()}


@pytest.fixture(scope="module")
def service(tiny_model_path):
    svc = HFRollout(tiny_model_path, {"a": LORA, "b": LORA}, num_threads=2)
    svc.publish("a", 0, lora_state(tiny_model_path, 1, 0.0))  # B == 0: the base itself
    svc.publish("b", 0, lora_state(tiny_model_path, 2, 0.3))
    return svc


def prompts(svc, n=3):
    tok = svc.tokenizer
    qs = ["What is 2 + 3?", "Tom has 4 apples and gets 5 more. How many now?", "What is 7 + 1?"][:n]
    return [
        tok(
            tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for q in qs
    ]


def test_unpublished_group_is_refused(tiny_model_path):
    svc = HFRollout(tiny_model_path, {"x": LORA})
    with pytest.raises(RuntimeError, match="no published adapter"):
        svc.generate([RolloutRequest("x", [[1, 2, 3]], 2, 4)])


def test_shapes_seeds_and_finish_reasons(service):
    req = RolloutRequest("a", prompts(service), n=4, max_new_tokens=12, seed=7)
    (r1,) = service.generate([req])
    (r2,) = service.generate([req])
    assert len(r1.completion_ids) == 12 and r1.prompt_ids[0] == r1.prompt_ids[3] != r1.prompt_ids[4]
    assert r1.completion_ids == r2.completion_ids  # same seed -> same completions
    eos = service.tokenizer.eos_token_id
    for ids, lps, fin in zip(r1.completion_ids, r1.logprobs, r1.finish_reasons):
        assert len(ids) == len(lps) and all(lp <= 0 for lp in lps)
        assert (fin == "stop") == (ids[-1] == eos) and (fin == "stop" or len(ids) == 12)
    (r3,) = service.generate([RolloutRequest("a", prompts(service), n=4, max_new_tokens=12, seed=8)])
    assert r3.completion_ids != r1.completion_ids


def test_prompts_prefilled_once_give_what_every_row_prefilled_gives(service, monkeypatch):
    """Each distinct prompt is prefilled once and its cache copied to its samples: the completions and
    log-probs are those of generating every row from its whole prompt."""
    reqs = [
        RolloutRequest("a", prompts(service), n=3, max_new_tokens=10, greedy=True),
        RolloutRequest("b", prompts(service, 2), n=2, max_new_tokens=10, greedy=True),
    ]
    shared = service.generate(reqs)
    monkeypatch.setattr(HFRollout, "_prefill", lambda self, *args: None)  # generate prefills every row itself
    full = service.generate(reqs)
    for s, f in zip(shared, full):
        assert s.completion_ids == f.completion_ids
        for a, b in zip(s.logprobs, f.logprobs):
            assert a == pytest.approx(b, abs=1e-4)


def test_each_row_uses_its_own_groups_adapter(service):
    ps = prompts(service)
    mixed = service.generate([RolloutRequest("a", ps, 1, 16, greedy=True), RolloutRequest("b", ps, 1, 16, greedy=True)])
    alone = [service.generate([RolloutRequest(g, ps, 1, 16, greedy=True)])[0] for g in ("a", "b")]
    for m, s in zip(mixed, alone):
        assert m.completion_ids == s.completion_ids
        for x, y in zip(m.logprobs, s.logprobs):
            assert x == pytest.approx(y, abs=1e-4)
    assert mixed[0].logprobs != mixed[1].logprobs  # the two adapters really differ


def test_publish_changes_what_is_served(service, tiny_model_path):
    ps = prompts(service, 1)
    req = RolloutRequest("a", ps, 1, 8, greedy=True)
    (before,) = service.generate([req])
    service.publish("a", 1, lora_state(tiny_model_path, 3, 0.3))
    (after,) = service.generate([req])
    assert after.adapter_version == 1 and before.adapter_version == 0
    assert before.logprobs[0][0] != pytest.approx(after.logprobs[0][0], abs=1e-4)
    service.publish("a", 2, lora_state(tiny_model_path, 1, 0.0))
    (back,) = service.generate([req])
    assert back.completion_ids == before.completion_ids


def test_wrong_adapter_shape_is_refused(service, tiny_model_path):
    with pytest.raises(ValueError, match="does not fit"):
        service.publish("a", 9, {"base_model.model.nonsense.lora_A.weight": torch.zeros(1)})
