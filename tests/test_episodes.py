"""groups/episodes.py, directly: the transcripts a group's step trains on are exactly what the sampler
saw (prompt, the model's own tokens under the loss mask, observations outside it), whatever the
number of turns."""

from __future__ import annotations

import pytest

from engine.models.base import prompt_ids
from engine.models.tiny import build_tokenizer
from engine.rollout.types import RolloutResult
from groups.episodes import Episodes

SAMPLING = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": 7, "greedy": False}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def result(tok, texts: list[str], stop: list[bool]) -> RolloutResult:
    ids = [
        tok(t, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if s else []) for t, s in zip(texts, stop)
    ]
    return RolloutResult(
        group="g",
        adapter_version=3,
        prompt_ids=[],
        completion_ids=ids,
        logprobs=[[-0.5] * len(i) for i in ids],
        finish_reasons=["stop" if s else "length" for s in stop],
    )


def episodes(tok, rows, n=2) -> Episodes:
    return Episodes(tok, lambda p: prompt_ids(tok, p), "g", rows, n, SAMPLING)


def test_a_single_turn_step_is_one_request_with_n_completions_per_prompt(tok):
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}]}, {"prompt": [{"role": "user", "content": "3+1?"}]}]
    eps = episodes(tok, rows)
    req = eps.first_request()
    assert req.n == 2 and req.group == "g" and req.seed == 7
    assert req.prompt_ids == [prompt_ids(tok, r["prompt"]) for r in rows]
    replies = eps.record(result(tok, ["4", "5", "4", "x"], [True, True, True, False]))
    assert replies == {0: "4", 1: "5", 2: "4", 3: "x"}
    t = eps.transcripts[3]
    assert t.row == 1 and t.ids == tok("x", add_special_tokens=False)["input_ids"] and t.mask == [1.0] * len(t.ids)
    assert t.finish_reason == "length" and not t.stopped and t.adapter_version == 3
    assert eps.transcripts[0].stopped and eps.transcripts[0].mask == [1.0, 1.0]  # "4" and the eos it sampled
    assert eps.completions()[1] == [{"role": "assistant", "content": "5"}]  # the model's turns only


def test_observations_are_in_the_sequence_but_outside_the_loss_mask(tok):
    """After two turns the trained sequence (prompt + ids) is the chat template's rendering of the whole
    conversation, token for token: the trainer sees exactly what the sampler saw."""
    rows = [{"prompt": [{"role": "system", "content": "Guess."}, {"role": "user", "content": "1-8?"}]}]
    eps = episodes(tok, rows, n=1)
    eps.first_request()
    eps.record(result(tok, ["4"], [True]))
    req = eps.request({0: "Higher."}, turn=2)
    t = eps.transcripts[0]
    assert req.n == 1 and req.seed != 7  # each turn its own seed
    assert req.prompt_ids == [t.prompt_ids + t.ids]
    eps.record(result(tok, ["6"], [True]))
    conversation = rows[0]["prompt"] + [
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Higher."},
        {"role": "assistant", "content": "6"},
    ]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert tok.decode(t.prompt_ids + t.ids) == rendered.removesuffix("\n")  # the template's last newline is not sampled
    model_tokens = [i for i, m in zip(t.ids, t.mask) if m == 1.0]
    eos = [tok.eos_token_id]
    assert (
        model_tokens
        == tok("4", add_special_tokens=False)["input_ids"] + eos + tok("6", add_special_tokens=False)["input_ids"] + eos
    )
    assert t.turns == 2 and t.replies == ["4", "6"]
    assert [lp for lp, m in zip(t.logprobs, t.mask) if m == 0.0] == [0.0] * t.mask.count(0.0)


def test_a_plain_string_prompt_stays_a_string(tok):
    eps = episodes(tok, [{"prompt": "Q: 2+2\nA:"}], n=1)
    eps.first_request()
    eps.record(result(tok, [" 4"], [False]))
    eps.request({0: "\nQ: 3+3\nA:"}, turn=2)
    eps.record(result(tok, [" 6"], [False]))
    t = eps.transcripts[0]
    assert tok.decode(t.prompt_ids + t.ids) == "Q: 2+2\nA: 4\nQ: 3+3\nA: 6"
    assert eps.completions() == [" 4 6"]


def test_a_result_that_does_not_match_the_request_is_refused(tok):
    eps = episodes(tok, [{"prompt": [{"role": "user", "content": "hi"}]}], n=2)
    eps.first_request()
    with pytest.raises(ValueError, match="group g: 3 completions for 2 episodes"):
        eps.record(result(tok, ["a", "b", "c"], [True, True, True]))
