"""Rebalancing strategies as pure functions: who is touched, who donates, what moves."""

import math
import random

import pytest

from groups.rebalance import STRATEGIES, exploit_explore, reallocate, relative_gaps

COHORTS = {"a-0": "a", "a-1": "a", "a-2": "a", "a-3": "a", "b": "b"}
HP = {g: {"lr": 0.01, "temperature": 1.0, "beta": 0.1, "prompts_per_step": 4} for g in COHORTS}


def test_relative_gap_is_to_the_cohorts_best():
    gaps = relative_gaps({"a-0": 1.0, "a-1": 0.8, "a-2": 0.95, "a-3": math.nan, "b": 0.1}, COHORTS)
    assert gaps["a-1"] == (pytest.approx(0.2), "a-0")
    assert gaps["a-0"] == (0.0, "a-0")
    assert gaps["b"] == (0.0, "b")  # alone in its cohort
    assert math.isnan(gaps["a-3"][0])  # not scored yet


def test_exploit_explore_touches_only_groups_beyond_the_threshold():
    scores = {"a-0": 1.0, "a-1": 0.5, "a-2": 0.95, "a-3": 0.92, "b": 0.1}
    decisions = exploit_explore(
        scores,
        COHORTS,
        HP,
        0.1,
        random.Random(0),
        quantile_fraction=0.25,
        perturbation_factors=(0.8, 1.2),
        perturb=["lr", "temperature"],
    )
    assert [d.group for d in decisions] == ["a-1"]  # a-2, a-3 are within 10%; b has no peers
    d = decisions[0]
    assert d.donor == "a-0" and d.gap == pytest.approx(0.5)
    new = d.new["a-1"]
    assert new["lr"] in (pytest.approx(0.008), pytest.approx(0.012))
    assert new["temperature"] in (pytest.approx(0.8), pytest.approx(1.2))
    assert "beta" not in new and d.old["a-1"] == {"lr": 0.01, "temperature": 1.0}  # only what changed


def test_exploit_explore_copies_the_donors_hyper_parameters():
    hp = {**HP, "a-0": {**HP["a-0"], "lr": 0.02}, "a-1": {**HP["a-1"], "lr": 0.0}}
    (d,) = exploit_explore(
        {"a-0": 1.0, "a-1": 0.1, "a-2": 0.99, "a-3": 0.99, "b": 1.0}, COHORTS, hp, 0.1, random.Random(1), perturb=["lr"]
    )
    assert d.new["a-1"]["lr"] in (pytest.approx(0.016), pytest.approx(0.024))  # from the donor's 0.02, not 0


def test_reallocate_keeps_the_total_and_respects_the_floor():
    scores = {"a-0": 1.0, "a-1": 0.2, "a-2": 0.5, "a-3": 0.99, "b": 0.3}
    hp = {g: dict(v) for g, v in HP.items()}
    hp["a-2"]["prompts_per_step"] = 1  # already at the floor
    decisions = reallocate(scores, COHORTS, hp, 0.1, random.Random(0), reallocate_prompts=2, min_prompts_per_step=1)
    assert [(d.group, d.donor) for d in decisions] == [("a-1", "a-0")]
    after = {g: v["prompts_per_step"] for g, v in hp.items()}
    for d in decisions:
        for g, new in d.new.items():
            after[g] = new["prompts_per_step"]
    assert after["a-1"] == 2 and after["a-0"] == 6 and after["a-2"] == 1
    assert sum(after.values()) == sum(v["prompts_per_step"] for v in hp.values())


def test_reallocate_moves_through_successive_decisions_consistently():
    scores = {"a-0": 1.0, "a-1": 0.2, "a-2": 0.3, "a-3": 0.99, "b": 0.3}
    decisions = reallocate(scores, COHORTS, HP, 0.1, random.Random(0), reallocate_prompts=1, min_prompts_per_step=1)
    assert [d.group for d in decisions] == ["a-1", "a-2"]
    # the second move starts from the best's budget after the first
    assert decisions[1].old["a-0"]["prompts_per_step"] == decisions[0].new["a-0"]["prompts_per_step"] == 5
    assert decisions[1].new["a-0"]["prompts_per_step"] == 6


def test_none_does_nothing():
    assert STRATEGIES["none"]({"a-0": 1.0, "a-1": 0.0}, COHORTS, HP, 0.1, random.Random(0)) == []
