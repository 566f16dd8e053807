"""Builders: config -> plain plans, envs and rewards; the accuracy metric."""

from engine.builders import accuracy_fn, build_rewards

TAGS = {"reasoning_start": "<think>", "reasoning_end": "</think>", "solution_start": "<SOLUTION>", "solution_end": "</SOLUTION>"}


def test_accuracy_is_numeric_or_exact_between_the_groups_tags():
    correct = accuracy_fn(TAGS)
    completions = ["<SOLUTION>12.0</SOLUTION>", "<SOLUTION>Paris</SOLUTION>", "<answer>4</answer>",
                   [{"role": "assistant", "content": "<SOLUTION>1,000</SOLUTION>"}], "<SOLUTION>5</SOLUTION>"]
    assert correct(None, completions, answer=["12", "Paris", "4", "1000", None]) == [1.0, 1.0, 0.0, 1.0, None]


def test_reward_names_are_unique_and_tags_reach_builtins():
    fns = build_rewards([{"name": "format_exact", "weight": 2.0, "params": {}}, {"name": "format_exact", "params": {}}], TAGS)
    assert [(n, w) for n, _, w in fns] == [("format_exact", 2.0), ("format_exact_2", 1.0)]
    fn = fns[0][1]
    assert fn(None, ["<think>a</think><SOLUTION>1</SOLUTION>", "<think>a</think><answer>1</answer>"]) == [1.0, 0.0]
