"""The ``auto`` router (engine/models/router.py) sends each group's held-out prompts to that group: fit on
the groups' own training prompts of configs/multidomain.yaml (medical in English and in Vietnamese,
legal, financial), scored on prompts none of them trained on."""

from __future__ import annotations

import shutil

from engine.config.builders import build_env, group_plans
from engine.config.loading import load_config
from engine.models.router import Router, prompt_text, run_router
from tests.conftest import REPO


def test_each_groups_held_out_prompts_go_to_that_group(tmp_path):
    shutil.copy(REPO / "configs" / "multidomain.yaml", tmp_path / "config.yaml")  # (a run directory's copy)
    router = run_router(tmp_path)
    cfg, config_dir = load_config(tmp_path / "config.yaml")
    accuracy = {}
    for plan in group_plans(cfg, config_dir):
        rows = build_env(plan.env, plan.seed, plan.tags, plan.eval_seed).eval_rows(50)
        accuracy[plan.name] = sum(router.route(prompt_text(r["prompt"])) == plan.name for r in rows) / len(rows)
    print(f"router accuracy on held-out prompts: {accuracy}")
    assert sorted(router.groups) == ["financial", "legal", "medical", "medical-vi"]
    assert all(a >= 0.95 for a in accuracy.values()), accuracy


def test_a_prompt_goes_to_the_nearest_groups_centroid():
    router = Router.fit({"cats": ["the cat sat", "a cat purrs"], "sums": ["what is 2 + 3?", "what is 7 + 1?"]})
    assert router.route("my cat") == "cats" and router.route("what is 4 + 4?") == "sums"
