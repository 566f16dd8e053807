"""#12: a dataset group takes its rows one after another however ``prompts_per_step`` changes mid-run
(``reallocate``): none skipped, none repeated; the position is restored with a checkpoint."""

from __future__ import annotations

import json


def test_rows_continue_after_prompts_per_step_changes(tmp_path, tiny_model_path):
    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from groups.actor import GroupActor

    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(40))
    )
    (tmp_path / "c.yaml").write_text("""
grpo: {prompts_per_step: 2, group_size: 2, max_completion_length: 8}
groups:
  - {name: d, env: {type: dataset, path: rows.jsonl, eval_fraction: 0.0}}
""")
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    actor = GroupActor(group_plans(cfg, config_dir)[0], tiny_model_path)

    def questions(step: int) -> list[str]:
        actor.begin(step)
        return [r["question"] for r in actor._episodes.rows]

    epoch = [r["question"] for r in actor.env.rows_from(0, 40)]  # the first shuffled epoch
    taken = questions(1) + questions(2)
    actor.set_hparams(prompts_per_step=3)  # reallocate gave this group one more prompt per step
    taken += questions(3) + questions(4)
    actor.set_hparams(prompts_per_step=1)
    taken += questions(5)
    assert taken == epoch[: 2 + 2 + 3 + 3 + 1] and actor.rows_used() == 11
    # a checkpoint's position: the same rows again from there
    actor.set_rows_used(4)
    assert questions(3) == epoch[4:5]
    actor.set_rows_used(None, step=3)  # no position saved: steps x the current prompts_per_step
    assert questions(4) == epoch[3:4]
