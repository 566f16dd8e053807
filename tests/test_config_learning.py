"""The shipped multi-domain and multi-agent configs learn what their headers say. Each runs through the
CLI as a user runs it (real local Ray, builtin:tiny, the file's own seed and settings) with fewer steps:

- configs/multidomain.yaml: every domain group's reward rises on its own domain;
- configs/multiagent.yaml: the signaling pair's success rises clearly above chance (1 / num_objects),
  and it does so by communicating (the receiver comes to pick what the sender's message names);
  the negotiation players reach deals that split the pot.

These runs also stand in for the two configs' smoke runs (tests/test_configs_smoke.py skips them).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rewards.text import extract_answer
from tests.conftest import REPO, run_cli

LEARNING_STEPS = {"multiagent": 16, "multidomain": 16}


def run_config(name: str, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp(name) / "run"
    proc = run_cli("run", str(REPO / "configs" / f"{name}.yaml"), f"steps={LEARNING_STEPS[name]}",
                   "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def multiagent_run(tmp_path_factory, tiny_model_path):
    return run_config("multiagent", tmp_path_factory)


@pytest.fixture(scope="module")
def multidomain_run(tmp_path_factory, tiny_model_path):
    return run_config("multidomain", tmp_path_factory)


def first_last(series: pd.Series, n: int = 5) -> tuple[float, float]:
    """Mean of the first and of the last ``n`` steps of a per-step series."""
    values = series.sort_index()
    return float(values.head(n).mean()), float(values.tail(n).mean())


def test_signaling_success_rises_clearly_above_chance(multiagent_run):
    from engine.loading import load_config

    cfg, _ = load_config(REPO / "configs" / "multiagent.yaml")
    (sender,) = [g for g in cfg.groups if g.env.type == "signaling" and g.env.role == "sender"]
    chance = 1 / sender.env.num_objects
    steps = pd.read_parquet(multiagent_run / "steps")
    success = steps[steps.group == "sender"].set_index("step")["accuracy"]  # the game's success, per step
    # 5 steps x 32 episodes: at chance (0.25), a mean of 0.6 has probability < 1e-15
    first, last = first_last(success)
    assert last >= 0.6 and last >= chance + 0.35, f"success {first:.2f} -> {last:.2f} (chance {chance:.2f})"
    assert last >= first + 0.15, f"success did not rise: {first:.2f} -> {last:.2f}"
    receiver = steps[steps.group == "receiver"].set_index("step")["accuracy"]
    assert receiver.equals(success)  # one game: both agents are scored on the same episodes
    evals = pd.read_parquet(multiagent_run / "evals")
    assert evals[evals.group == "receiver"]["correct"].mean() >= 0.75  # greedy play after the last step


def _message(reply: str) -> str:
    inside = extract_answer(reply, "<answer>", "</answer>")
    return (inside if inside is not None else reply.strip())[:16]


def test_the_receiver_learns_to_pick_what_the_message_names(multiagent_run):
    samples = pd.read_parquet(multiagent_run / "samples")
    key = ["step", "prompt_index", "sample_index"]
    sent = samples[samples.group == "sender"].set_index(key)["completion"].map(_message)
    picked = samples[samples.group == "receiver"].set_index(key)["completion"].map(
        lambda c: (extract_answer(c, "<answer>", "</answer>") or "").strip().lower())
    follows = (sent == picked.reindex(sent.index)).groupby(level="step").mean()
    first, last = first_last(follows)
    assert last >= 0.5 and last >= first + 0.1, f"receiver follows the message {first:.2f} -> {last:.2f}"


def test_negotiation_players_make_deals_that_split_the_pot(multiagent_run):
    steps = pd.read_parquet(multiagent_run / "steps")
    opener = steps[steps.group == "opener"].set_index("step")
    responder = steps[steps.group == "responder"].set_index("step")
    assert opener["accuracy"].equals(responder["accuracy"])  # deal rate, one game
    assert opener["accuracy"].max() > 0, "no deal in any step"
    # a deal splits the whole pot: per step, the two players' mean rewards add up to the deal rate
    total = opener["reward/env_reward"] + responder["reward/env_reward"]
    assert (total - opener["accuracy"]).abs().max() < 1e-6
    assert opener["turns_mean"].mean() > 1  # openers also move after the first offer


def test_every_domain_reward_rises_on_its_own_domain(multidomain_run):
    steps = pd.read_parquet(multidomain_run / "steps")
    assert sorted(steps.group.unique()) == ["financial", "legal", "medical", "medical-vi"]
    for group, g in steps.groupby("group"):
        first, last = first_last(g.set_index("step")["reward"])
        assert last > first + 0.15, f"{group}: reward {first:.2f} -> {last:.2f}"
    samples = pd.read_parquet(multidomain_run / "samples")
    system = {"medical": "Medical calculation.", "medical-vi": "Tính toán y khoa.", "legal": "Apply the rules given.",
              "financial": "Finance math."}  # each group's prompts come from its own domain's task
    for group, prompts in samples.groupby("group")["prompt"]:
        assert prompts.str.contains(system[group], regex=False).all(), group
