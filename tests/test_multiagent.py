"""Multi-turn envs and multi-agent games through the real engine (local Ray, tiny model): each agent's
turns are generated with its own adapter, messages reach the other agent, and the loss covers the
model's own tokens only."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

STEPS = 3
CONFIG = """
seed: 3
steps: {steps}
base_model: {model}
backend: hf
eval_prompts: 4
grpo: {{prompts_per_step: 2, group_size: 4, max_completion_length: 20, lr: 0.02}}
population: {{eval_interval: 0}}
groups:  # format_approx next to the game's reward, so that every adapter moves away from the base
  - name: sender
    env: {{type: signaling, role: sender}}
    rewards: [{{name: env_reward}}, {{name: format_approx}}]
  - name: receiver
    env: {{type: signaling, role: receiver}}
    rewards: [{{name: env_reward}}, {{name: format_approx}}]
  - name: opener
    env: {{type: negotiation, role: first, max_turns: 3}}
    rewards: [{{name: env_reward}}, {{name: format_approx}}]
  - name: responder
    env: {{type: negotiation, role: second, max_turns: 3}}
    rewards: [{{name: env_reward}}, {{name: format_approx}}]
  - name: guesser
    env: {{type: guess, high: 8, max_turns: 3}}
"""


@pytest.fixture(scope="module")
def games_run(tmp_path_factory, tiny_model_path):
    tmp = tmp_path_factory.mktemp("games")
    (tmp / "games.yaml").write_text(CONFIG.format(steps=STEPS, model=tiny_model_path))
    proc = run_cli("run", str(tmp / "games.yaml"), "--run-dir", str(tmp / "run"), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "run"


def test_every_agent_trains_and_multi_turn_episodes_have_several_turns(games_run):
    steps = pd.read_parquet(games_run / "steps")
    assert sorted(steps.group.unique()) == ["guesser", "opener", "receiver", "responder", "sender"]
    assert len(steps) == 5 * STEPS
    turns = steps.groupby("group").turns_mean.mean()
    assert turns["sender"] == 1 and turns["receiver"] == 1
    assert turns["opener"] >= 1.5 and turns["responder"] >= 1  # opener moves on turns 1 and 3
    assert turns["guesser"] > 1.5  # the tiny model rarely finds the number at once
    assert steps["reward/env_reward"].notna().all()


def test_the_receiver_sees_the_senders_message_of_the_same_episode(games_run):
    samples = pd.read_parquet(games_run / "samples")
    key = ["step", "prompt_index", "sample_index"]
    sender = samples[samples.group == "sender"].set_index(key).sort_index()
    receiver = samples[samples.group == "receiver"].set_index(key).sort_index()
    assert len(sender) == len(receiver) == STEPS * 2 * 4
    from rewards.text import extract_answer

    for k in sender.index:
        reply = sender.loc[k, "completion"]
        inside = extract_answer(reply, "<answer>", "</answer>")
        message = (inside if inside is not None else reply.strip())[:16]
        assert f"Message: {message}<|im_end|>" in receiver.loc[k, "prompt"]
        assert sender.loc[k, "reward/env_reward"] == receiver.loc[k, "reward/env_reward"]  # cooperative


def _logprobs(model, row) -> torch.Tensor:
    from engine.trainer.grpo import completion_logprobs

    ids = torch.tensor([list(row["prompt_ids"]) + list(row["completion_ids"])])
    with torch.no_grad():
        return completion_logprobs(model, ids, torch.ones_like(ids), len(row["prompt_ids"]), 1.0)[0]


@pytest.mark.parametrize(
    "group, other", [("receiver", "sender"), ("sender", "receiver"), ("opener", "responder"), ("responder", "opener")]
)
def test_each_agents_turns_were_generated_with_its_own_adapter(games_run, tiny_model_path, group, other):
    """The sampler's log-probs of an agent's tokens are its own adapter's, not its partner's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    evals = pd.read_parquet(games_run / "evals")
    rows = evals[evals.group == group]
    assert len(rows) == 4
    gaps = {}
    for name in (group, other):
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_path), str(games_run / "adapters" / name)
        ).eval()
        gaps[name] = max(
            float(
                (
                    (_logprobs(model, r) - torch.tensor(list(r["logprobs"]))).abs()
                    * torch.tensor(list(r["completion_mask"]))
                ).max()
            )
            for _, r in rows.iterrows()
        )
    assert gaps[group] < 1e-4
    assert gaps[other] > 1e-3


def test_the_loss_mask_covers_the_models_tokens_only(games_run, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    evals = pd.read_parquet(games_run / "evals")
    rows = evals[(evals.group == "guesser") & (evals.turns > 1)]
    assert len(rows), "no multi-turn guess episode in the eval"
    for _, r in rows.iterrows():
        ids, mask = list(r["completion_ids"]), list(r["completion_mask"])
        env_text = tok.decode([i for i, m in zip(ids, mask) if m == 0])
        model_text = tok.decode([i for i, m in zip(ids, mask) if m == 1], skip_special_tokens=True)
        assert "Higher." in env_text or "Lower." in env_text or "Reply with a number" in env_text
        assert "<|im_start|>user" in env_text and "<|im_start|>assistant" in env_text
        assert "Higher." not in model_text and "Lower." not in model_text
        assert all(lp == 0.0 for lp, m in zip(r["logprobs"], mask) if m == 0)
        # the whole transcript is what the chat template renders for the conversation
        full = tok.decode(list(r["prompt_ids"]) + ids)
        assert full.count("<|im_start|>assistant") == r["turns"]
