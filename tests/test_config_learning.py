"""The shipped multi-domain and multi-agent configs learn what their headers say. Each runs through the
CLI as a user runs it (real local Ray, builtin:tiny, the file's own seed and settings) with fewer steps:

- configs/multidomain.yaml: every domain group's reward rises on its own domain;
- configs/multiagent.yaml: the signaling pair's success rises clearly above chance (1 / num_objects),
  and it does so by communicating (the receiver comes to pick what the sender's message names);
  the negotiation players reach deals that split the pot.

These runs also stand in for the two configs' smoke runs (tests/test_configs_smoke.py skips them).

Spread measured across builds of builtin:tiny (``lorapop build-tiny`` under ATEN_CPU_CAPABILITY=avx512,
avx2 and default; the shipped weights are the default build), first 5 -> last 5 steps, on one
2-core AVX-512 host (run with ``LORAPOP_TEST_BASE_MODEL=<build dir>``):

=============================  ==============  ==============  ==================
                               avx512          avx2            default (shipped)
=============================  ==============  ==============  ==================
signaling success (20 steps)   0.51 -> 0.72*   0.47 -> 0.74    0.49 -> 0.75
receiver follows the message   0.47 -> 0.69*   0.45 -> 0.75    0.44 -> 0.67
negotiation best deal rate     0.59            0.84            0.88
financial reward (16 steps)    0.26 -> 0.89    0.29 -> 0.63    0.25 -> 0.58
legal                          0.17 -> 0.63    -0.05 -> 0.24   0.20 -> 0.74
medical                        0.30 -> 0.84    0.28 -> 0.76    0.38 -> 0.89
medical-vi                     0.05 -> 0.75    -0.08 -> 0.52   0.03 -> 0.59
=============================  ==============  ==============  ==================

(* measured at 24 steps.) With the exact format as the only format reward, a domain whose prompts a
build never answers in that format at first learned nothing: every reward 0, every advantage 0
(avx2 legal 0.00 -> 0.06; an AVX-512 build of another host: medical-vi 0.00 -> 0.01). The
multidomain config's partial-credit format reward (format_approx, weight 0.25) gives every domain a
signal from step 0; at weight 0.5 it pulled avx512's legal group toward tags without the exact format
(exact format 0.16 -> 0.01). At 24 steps the signaling pair of the default build starts drifting to
a private code (receiver follows 0.69 at step 16, 0.57 over steps 20-24), so the test stops at 20.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rewards.text import extract_answer
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

LEARNING_STEPS = {"multiagent": 20, "multidomain": 16}


def run_config(name: str, tmp_path_factory, base_model: str) -> Path:
    run_dir = tmp_path_factory.mktemp(name) / "run"
    proc = run_cli(
        "run",
        str(REPO / "configs" / f"{name}.yaml"),
        f"steps={LEARNING_STEPS[name]}",
        f"base_model={base_model}",
        "--run-dir",
        str(run_dir),
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def multiagent_run(tmp_path_factory, tiny_model_path):
    return run_config("multiagent", tmp_path_factory, tiny_model_path)


@pytest.fixture(scope="module")
def multidomain_run(tmp_path_factory, tiny_model_path):
    return run_config("multidomain", tmp_path_factory, tiny_model_path)


def first_last(series: pd.Series, n: int = 5) -> tuple[float, float]:
    """Mean of the first and of the last ``n`` steps of a per-step series."""
    values = series.sort_index()
    return float(values.head(n).mean()), float(values.tail(n).mean())


def test_signaling_success_rises_clearly_above_chance(multiagent_run):
    from engine.config.loading import load_config

    cfg, _ = load_config(REPO / "configs" / "multiagent.yaml")
    (sender,) = [g for g in cfg.groups if g.env.type == "signaling" and g.env.role == "sender"]
    chance = 1 / sender.env.num_objects
    steps = pd.read_parquet(multiagent_run / "steps")
    success = steps[steps.group == "sender"].set_index("step")["accuracy"]  # the game's success, per step
    # 5 steps x 32 episodes: at chance (0.25), a mean of 0.6 has probability < 1e-15
    first, last = first_last(success)
    print(f"signaling success {first:.2f} -> {last:.2f}")
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
    picked = (
        samples[samples.group == "receiver"]
        .set_index(key)["completion"]
        .map(lambda c: (extract_answer(c, "<answer>", "</answer>") or "").strip().lower())
    )
    follows = (sent == picked.reindex(sent.index)).groupby(level="step").mean()
    first, last = first_last(follows)
    print(f"receiver follows {first:.2f} -> {last:.2f}")
    assert last >= 0.5 and last >= first + 0.1, f"receiver follows the message {first:.2f} -> {last:.2f}"


def test_negotiation_players_make_deals_that_split_the_pot(multiagent_run):
    steps = pd.read_parquet(multiagent_run / "steps")
    opener = steps[steps.group == "opener"].set_index("step")
    responder = steps[steps.group == "responder"].set_index("step")
    assert opener["accuracy"].equals(responder["accuracy"])  # deal rate, one game
    print(f"negotiation deal rate max {opener['accuracy'].max():.2f}, turns {opener['turns_mean'].mean():.2f}")
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
        f0, f1 = first_last(g.set_index("step")["reward/format_exact"])
        print(f"{group}: reward {first:.2f} -> {last:.2f}, exact format {f0:.2f} -> {f1:.2f}")
        assert last > first + 0.15, f"{group}: reward {first:.2f} -> {last:.2f}"
    samples = pd.read_parquet(multidomain_run / "samples")
    system = {
        "medical": "Medical calculation.",
        "medical-vi": "Tính toán y khoa.",
        "legal": "Apply the rules given.",
        "financial": "Finance math.",
    }  # each group's prompts come from its own domain's task
    for group, prompts in samples.groupby("group")["prompt"]:
        assert prompts.str.contains(system[group], regex=False).all(), group
