"""Behaviour of rewards/: built-ins, the registry, and weighted scoring (TRL's reward contract)."""

from __future__ import annotations

import doctest
import math

import pytest

from rewards import builtin, registry, scoring, text
from rewards.builtin import answer_exact, answer_numeric, format_approx, format_exact
from rewards.registry import RewardLoadError, load_reward
from rewards.scoring import score
from rewards.text import extract_answer, parse_number

UNSLOTH_TAGS = dict(
    reasoning_start="<start_working_out>",
    reasoning_end="<end_working_out>",
    solution_start="<SOLUTION>",
    solution_end="</SOLUTION>",
)


def chat(content: str) -> list[dict[str, str]]:
    """A conversational completion, as TRL passes it."""
    return [{"role": "assistant", "content": content}]


def call(fn, completions, **columns):
    return fn(prompts=["q"] * len(completions), completions=completions, **columns)


@pytest.mark.parametrize("module", [text, builtin, registry, scoring])
def test_doctests_pass(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_text_helpers():
    assert extract_answer("<a>1</a> x <a> 2 </a>", "<a>", "</a>") == "2"
    assert extract_answer("<a>1</a> x <a> 2", "<a>", "</a>") is None
    assert extract_answer("no tags", "<a>", "</a>") is None
    assert parse_number("1,234") == 1234.0 and parse_number("-3.5") == -3.5
    assert parse_number("12.0") == 12.0 and parse_number("$12") == 12.0 and parse_number("12%") == 12.0
    assert parse_number("12.") == 12.0
    for bad in ["", "abc", "1 2 x", "nan", None]:
        assert parse_number(bad) is None


def test_format_exact_default_tags():
    fn = format_exact()
    good = "  <think>step 1\nstep 2</think>\n\n<answer>42</answer>\n"
    bad = [
        "<think>x</think><answer></answer>",  # empty answer
        "<think>x</think><answer>42</answer> trailing",  # not anchored at the end
        "lead <think>x</think><answer>42</answer>",  # not anchored at the start
        "<answer>42</answer>",  # no reasoning
        "<think>x</think> 42",
    ]
    assert call(fn, [good, *bad]) == [1.0] + [0.0] * len(bad)
    assert call(fn, [chat(good), chat(bad[0])]) == [1.0, 0.0]
    assert fn.__name__ == "format_exact"


def test_format_exact_custom_tags():
    fn = format_exact(**UNSLOTH_TAGS)
    good = "<start_working_out>2+2<end_working_out><SOLUTION>4</SOLUTION>"
    assert call(fn, [good, chat(good), "<think>2+2</think><answer>4</answer>"]) == [1.0, 1.0, 0.0]
    # tags are escaped, not regexes: "." in a tag must not match any character
    dotted = format_exact(reasoning_start="<t.>", reasoning_end="</t.>")
    assert call(dotted, ["<t.>x</t.><answer>1</answer>", "<tx>x</tx><answer>1</answer>"]) == [1.0, 0.0]


def test_format_approx():
    fn = format_approx()
    completions = [
        "<think>a</think><answer>1</answer>",  # all four once
        chat("<think>a</think><think>b</think><answer>1</answer>"),  # two think tags twice
        "<answer>1</answer>",  # two tags once
        "nothing",
    ]
    assert call(fn, completions) == [1.0, 0.0, 0.0, -1.0]
    custom = format_approx(**UNSLOTH_TAGS)
    assert call(custom, ["<start_working_out>a<end_working_out><SOLUTION>1</SOLUTION>"]) == [1.0]
    assert custom.__name__ == "format_approx"


def test_answer_exact():
    fn = answer_exact()
    completions = [
        "<answer> 12 </answer>",
        chat("<answer>12</answer>"),
        "12",
        "<answer>12.0</answer>",
        "<answer>7</answer>",
    ]
    assert call(fn, completions, answer=[12, "12", "12", "12", None], other=[0] * 5) == [1.0, 1.0, 0.0, 0.0, None]
    with pytest.raises(KeyError, match="answer_exact.*answer"):
        call(fn, ["<answer>1</answer>"])


def test_answer_numeric():
    fn = answer_numeric()
    completions = [
        "<answer>1,234</answer>",
        chat("<think>..</think><answer>12.0</answer>"),
        "<answer>$12.</answer>",
        "12",  # no tags
        "<answer>twelve</answer>",
        "<answer>13</answer>",
        "<answer>5</answer>",
    ]
    got = call(fn, completions, answer=["1234", 12, "12", "12", "12", "12", None])
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, None]
    loose = answer_numeric(rel_tol=0.1, **{k: v for k, v in UNSLOTH_TAGS.items() if k.startswith("solution")})
    assert call(loose, ["<SOLUTION>10.5</SOLUTION>", "<SOLUTION>12</SOLUTION>"], answer=["10", "10"]) == [1.0, 0.0]
    with pytest.raises(KeyError, match="answer_numeric"):
        call(fn, ["<answer>1</answer>"])


def test_user_conversational_function_runs_through_score():
    def count_yes(prompts, completions, **kwargs):
        return [float(c[0]["content"].count("yes")) for c in completions]

    result = score([("count_yes", count_yes, 2.0)], ["p", "p"], [chat("yes yes"), chat("no")], {"answer": ["a", "b"]})
    assert result.per_function == {"count_yes": [2.0, 0.0]} and result.total == [4.0, 0.0]
    assert result.failures == {}


def test_trl_think_format_reward_runs_through_score():
    pytest.importorskip("trl")
    from trl.rewards import think_format_reward

    completions = [chat("<think>\nreason\n</think>\nanswer"), chat("<think>\nreason\nanswer"), chat("no think")]
    fmt = format_exact()
    result = score(
        [("think_format_reward", think_format_reward, 1.0), ("format_exact", fmt, 0.5)],
        ["p"] * 3,
        completions,
        {"answer": ["1", "2", "3"]},
    )
    assert result.failures == {}
    assert result.per_function["think_format_reward"] == [1.0, 0.0, 0.0]
    assert result.total == [1.0, 0.0, 0.0]


def test_load_builtin_with_defaults_and_params():
    fn = load_reward("format_exact", defaults={**UNSLOTH_TAGS, "lr": 1e-4, "rel_tol": 0.5})
    assert fn.__name__ == "format_exact"
    assert call(fn, ["<start_working_out>a<end_working_out><SOLUTION>1</SOLUTION>"]) == [1.0]
    # params override defaults; defaults only reach keywords the factory accepts
    num = load_reward("answer_numeric", params={"rel_tol": 0.2}, defaults={**UNSLOTH_TAGS, "target": 3})
    assert call(num, ["<SOLUTION>11</SOLUTION>"], answer=["10"]) == [1.0]


def test_load_user_function_factory_and_file_path():
    fn = load_reward("tests.reward_fixtures:my_reward")
    assert fn.__name__ == "my_reward" and call(fn, [chat("yes, yes"), chat("no")]) == [2.0, 0.0]
    made = load_reward("tests.reward_fixtures:contains", params={"word": "cat", "value": 0.5})
    assert call(made, [chat("a cat"), chat("a dog")]) == [0.5, 0.0]
    from_file = load_reward("tests/reward_fixtures.py:my_reward")
    assert from_file.__name__ == "my_reward" and call(from_file, [chat("yes")]) == [1.0]


@pytest.mark.parametrize(
    "name, params, pattern",
    [
        ("nosuchmod:fn", None, r"nosuchmod:fn.*ModuleNotFoundError"),
        ("tests.reward_fixtures:missing", None, r"tests\.reward_fixtures:missing.*'missing'"),
        ("tests.reward_fixtures:NOT_CALLABLE", None, r"NOT_CALLABLE.*not callable"),
        ("tests.reward_fixtures:not_a_factory", {"word": "x"}, r"not_a_factory.*not a callable"),
        ("tests.reward_fixtures:contains", {"nope": 1}, r"contains.*TypeError"),
        ("tests/no_such_file.py:fn", None, r"no_such_file\.py:fn"),
        ("format_exakt", None, r"format_exakt.*answer_exact.*format_exact"),
        ("format_exact", {"solution_tag": "<s>"}, r"format_exact.*solution_tag.*solution_start"),
    ],
)
def test_load_errors_name_the_spec(name, params, pattern):
    with pytest.raises(RewardLoadError, match=pattern):
        load_reward(name, params)


def test_score_records_failures_and_keeps_the_rest():
    def boom(prompts, completions, **kwargs):
        raise RuntimeError("grader down")

    short = lambda prompts, completions, **kw: [1.0]  # noqa: E731 - wrong length
    words = lambda prompts, completions, **kw: ["good"] * len(completions)  # noqa: E731 - not numbers
    half = lambda prompts, completions, **kw: [None, 1.0, None]  # noqa: E731
    one = lambda prompts, completions, **kw: [1] * len(completions)  # noqa: E731 - ints are fine
    fns = [("boom", boom, 1.0), ("short", short, 1.0), ("words", words, 1.0), ("half", half, 3.0), ("one", one, 0.5)]
    result = score(fns, ["p"] * 3, ["a", "b", "c"], {})
    assert result.failures["boom"] == "RuntimeError: grader down"
    assert set(result.failures) == {"boom", "short", "words"}
    assert all(math.isnan(v) for name in ["boom", "short", "words"] for v in result.per_function[name])
    assert math.isnan(result.per_function["half"][0]) and result.per_function["half"][1] == 1.0
    assert result.total == [0.5, 3.5, 0.5]
    assert result.unscorable == [False, False, False]


def test_score_all_nan_row_totals_zero_and_is_flagged():
    def none_first(prompts, completions, **kwargs):
        return [None, 2.0]

    result = score([("a", none_first, 1.0), ("b", none_first, 2.0)], ["p", "p"], ["x", "y"], {"answer": [1, 2]})
    assert result.total == [0.0, 6.0] and result.unscorable == [True, False]


def test_an_infinite_reward_fails_its_function_and_nan_means_no_reward():
    """#12: inf would make a whole group's advantages NaN: the function counts as failed on the batch;
    a NaN is a missing reward (as None), summed over with nansum as TRL does."""
    ones = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    blows = lambda prompts, completions, **kw: [2.0, -math.inf]  # noqa: E731
    gaps = lambda prompts, completions, **kw: [math.nan, 3.0]  # noqa: E731
    r = score([("ones", ones, 1.0), ("blows", blows, 1.0), ("gaps", gaps, 1.0)], ["p", "p"], ["a", "b"], {})
    assert "blows" in r.failures and "reward 1 is -inf" in r.failures["blows"]
    assert all(math.isnan(x) for x in r.per_function["blows"]) and "gaps" not in r.failures
    assert r.total == [1.0, 4.0]


def test_unscorable_rows_are_flagged_and_masked_as_nan():
    def none_first(prompts, completions, **kwargs):
        return [None, 2.0, None]

    def fails(prompts, completions, **kwargs):
        raise RuntimeError("grader down")

    result = score([("a", none_first, 1.0), ("b", fails, 1.0)], ["p"] * 3, ["x", "y", "z"], {})
    assert result.unscorable == [True, False, True]
    assert result.total == [0.0, 2.0, 0.0]  # the samples and evals tables' reward
    assert math.isnan(result.masked_total[0]) and math.isnan(result.masked_total[2])
    assert result.masked_total[1] == 2.0


SKIPS = """
def skips(prompts, completions, **kwargs):
    # no reward (None) for a completion that says 'skip'; 1 for 'yes', 0 otherwise
    texts = [c[0]["content"] for c in completions]
    return [None if "skip" in t else float("yes" in t) for t in texts]
"""


def test_a_group_step_ignores_unscorable_completions_as_trl_does(tmp_path, tiny_model_path):
    """Through the group actor (no Ray): a completion that no reward function scores gets advantage 0
    and leaves its prompt's baseline alone; the step's ``reward`` / ``reward_std`` are over the scorable
    completions only; its ``samples`` row has a null reward and null ``reward/<fn>``."""
    import json

    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from engine.rollout.types import RolloutResult
    from engine.trainer.fused import GroupResult
    from groups.actor import GroupActor

    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "skip_rewards.py").write_text(SKIPS)
    (tmp_path / "c.yaml").write_text(
        json.dumps(
            {
                "grpo": {"prompts_per_step": 2, "group_size": 3, "max_completion_length": 8},
                "groups": [
                    {
                        "name": "a",
                        "env": {"type": "dataset", "path": "data.jsonl", "eval_fraction": 0.0},
                        "rewards": [{"name": "skip_rewards:skips"}],
                    }
                ],
            }
        )
    )
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    actor = GroupActor(group_plans(cfg, config_dir)[0], tiny_model_path)
    request = actor.begin(1)
    texts = ["yes", "skip", "no", "skip", "skip", "skip"]  # prompt 1: one unscorable; prompt 2: all
    ids = [actor.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    actor.observe(RolloutResult("a", 0, request.prompt_ids, ids, [[-1.0] * len(i) for i in ids], ["stop"] * 6))
    job = actor.prepare(1)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)  # prompt 1's scorable rewards (1, 0): mean .5, std sqrt(.5)
    assert job.batch.advantages.tolist() == pytest.approx([a, 0.0, -a, 0.0, 0.0, 0.0], abs=1e-6)
    assert job.batch.advantages[[1, 3, 4, 5]].tolist() == [0.0] * 4
    out = actor.finish(1, GroupResult("a", loss=0.0, grad_norm=0.0, lr=1e-5), 0.1, 0.1)
    m = out.metrics
    assert m["reward"] == pytest.approx(0.5) and m["reward_std"] == pytest.approx(math.sqrt(0.5))
    samples = out.samples
    assert [None if math.isnan(s["reward"]) else s["reward"] for s in samples] == [1.0, None, 0.0, None, None, None]
    assert [math.isnan(s["reward/skips"]) for s in samples] == [False, True, False, True, True, True]
    assert [s["advantage"] for s in samples] == pytest.approx([a, 0.0, -a, 0.0, 0.0, 0.0], abs=1e-6)
