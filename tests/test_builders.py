"""Builders: config -> per-group plans (typed settings), envs and rewards; the accuracy metric."""

import pytest

from engine.config.builders import accuracy_fn, build_rewards
from engine.config.schema import RewardSpec, TagFormat

TAGS = TagFormat(
    reasoning_start="<think>", reasoning_end="</think>", solution_start="<SOLUTION>", solution_end="</SOLUTION>"
)


def test_accuracy_is_numeric_or_exact_between_the_groups_tags():
    correct = accuracy_fn(TAGS)
    completions = [
        "<SOLUTION>12.0</SOLUTION>",
        "<SOLUTION>Paris</SOLUTION>",
        "<answer>4</answer>",
        [{"role": "assistant", "content": "<SOLUTION>1,000</SOLUTION>"}],
        "<SOLUTION>5</SOLUTION>",
    ]
    assert correct(None, completions, answer=["12", "Paris", "4", "1000", None]) == [1.0, 1.0, 0.0, 1.0, None]


def test_reward_names_are_unique_and_tags_reach_builtins():
    fns = build_rewards([RewardSpec(name="format_exact", weight=2.0), RewardSpec(name="format_exact")], TAGS)
    assert [(n, w) for n, _, w in fns] == [("format_exact", 2.0), ("format_exact_2", 1.0)]
    fn = fns[0][1]
    assert fn(None, ["<think>a</think><SOLUTION>1</SOLUTION>", "<think>a</think><answer>1</answer>"]) == [1.0, 0.0]


def test_a_cohorts_replicas_train_apart_and_are_evaluated_on_one_held_out_set(tmp_path):
    """Replicas differ by seed in what they train on; their held-out set is the cohort's, so their eval
    scores compare like with like and no replica trains on another's held-out rows (datasets too)."""
    import json
    from pathlib import Path

    from engine.config.builders import build_env, group_plans
    from engine.config.schema import RunConfig

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(40)))
    cfg = RunConfig.model_validate(
        {
            "groups": [
                {"name": "med", "num_groups": 3, "env": {"type": "medical", "difficulty": 0}},
                {"name": "ds", "num_groups": 2, "env": {"type": "dataset", "path": str(data), "eval_fraction": 0.2}},
            ]
        }
    )
    plans = group_plans(cfg, Path(tmp_path))
    envs = {p.name: build_env(p.env, p.seed, p.tags, p.eval_seed) for p in plans}
    questions = lambda rows: [
        r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"] for r in rows
    ]
    med = [envs[f"med-{k}"] for k in range(3)]
    assert len({tuple(questions(e.batch(1, 4))) for e in med}) == 3  # each replica its own training stream
    assert len({tuple(questions(e.eval_rows(8))) for e in med}) == 1  # one held-out set
    ds = [envs["ds-0"], envs["ds-1"]]
    held = set(questions(ds[0].eval_rows(8)))
    assert held == set(questions(ds[1].eval_rows(8))) and len(held) == 8
    trained = {q for e in ds for step in range(1, 12) for q in questions(e.batch(step, 4))}
    assert trained and not trained & held


def test_a_plan_carries_the_groups_settings_as_validated_models(tmp_path, tiny_model_path):
    """A plan's GRPO, LoRA and tag settings are the config's models (merged run-level defaults included),
    and a group actor's hyper-parameters start as a copy it can change without touching the plan."""
    from pathlib import Path

    from engine.config.builders import group_plans
    from engine.config.schema import GRPOConfig, LoraConfig, RunConfig
    from groups.actor import GroupActor

    cfg = RunConfig.model_validate(
        {
            "grpo": {"lr": 0.003},
            "groups": [
                {"name": "a", "grpo": {"group_size": 4}, "format": {"solution_start": "<S>", "solution_end": "</S>"}}
            ],
        }
    )
    (plan,) = group_plans(cfg, Path(tmp_path))
    assert isinstance(plan.grpo, GRPOConfig) and isinstance(plan.lora, LoraConfig) and isinstance(plan.tags, TagFormat)
    assert (plan.grpo.lr, plan.grpo.group_size, plan.tags.solution_start) == (0.003, 4, "<S>")
    actor = GroupActor(plan, tiny_model_path)  # (a plain object here; the coordinator runs it under Ray)
    assert actor.set_hparams(lr=0.001)["lr"] == 0.001 and plan.grpo.lr == 0.003
    with pytest.raises(KeyError, match="unknown hyper-parameters"):
        actor.set_hparams(learning_rate=0.1)
