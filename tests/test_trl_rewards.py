"""#12: "a TRL reward drops in unchanged". Every function of ``trl.rewards`` that runs offline, named in a
group's config as ``module:function`` (factories with ``params``), scores a step through the group actor
with no failure and TRL's values; a user function sees every keyword TRL's ``GRPOTrainer`` passes; a
function that fails on every call of the first step stops the run with exit 2 and its error."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli

pytest.importorskip("trl")
pytest.importorskip("math_verify")

ROWS = [
    {"question": "What is one third?", "answer": "1/3", "solution": r"$\frac{1}{3}$"},
    {"question": "What is half of one?", "answer": "1/2", "solution": r"$\frac{1}{2}$"},
]
RIGHT, WRONG = "<think>\nthink\n</think>\n$\\frac{1}{3}$", "no no no no no no $\\frac{1}{5}$"

SPY = """
SEEN = []

def spy(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, solution, **kwargs):
    SEEN.append({"ids": completion_ids, "step": trainer_state.global_step, "max": trainer_state.max_steps,
                 "solution": solution, "keys": sorted(kwargs)})
    log_metric("spy_calls", 1.0)
    log_extra("spy_len", [len(c[0]["content"]) for c in completions])
    return [float(len(ids)) for ids in completion_ids]
"""

REWARDS = [
    ("think_format_reward", {}),
    ("accuracy_reward", {}),
    ("reasoning_accuracy_reward", {}),
    ("get_repetition_penalty_reward", {"ngram_size": 2, "max_penalty": -1.0}),
    ("get_soft_overlong_punishment", {"max_completion_len": 40, "soft_punish_cache": 20}),
    ("get_cosine_scaled_reward", {"max_len": 40}),
]


def _group(tmp_path, tiny_model_path):
    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from groups.actor import GroupActor

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "spy_rewards.py").write_text(SPY)
    rewards = [{"name": f"trl.rewards:{n}", **({"params": p} if p else {})} for n, p in REWARDS]
    rewards.append({"name": "spy_rewards:spy"})
    (tmp_path / "c.yaml").write_text(
        json.dumps(
            {
                "steps": 7,
                "grpo": {"prompts_per_step": 1, "group_size": 2, "max_completion_length": 40},
                "groups": [
                    {
                        "name": "a",
                        "env": {"type": "dataset", "path": "data.jsonl", "eval_fraction": 0.0},
                        "rewards": rewards,
                    }
                ],
            }
        )
    )
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    return GroupActor(group_plans(cfg, config_dir)[0], tiny_model_path)


def test_every_offline_trl_reward_scores_a_step_through_the_group_actor(tmp_path, tiny_model_path):
    from engine.rollout.types import RolloutResult
    from engine.trainer.fused import GroupResult

    actor = _group(tmp_path, tiny_model_path)
    request = actor.begin(3)
    tok = actor.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (RIGHT, WRONG)]
    actor.observe(RolloutResult("a", 0, request.prompt_ids, ids, [[-1.0] * len(i) for i in ids], ["stop", "stop"]))
    actor.prepare(3)
    scored = actor._scored[0]
    assert scored.failures == {}
    per = scored.per_function
    solution = actor._episodes.rows[0]["solution"]
    right_answer = solution == r"$\frac{1}{3}$"
    assert per["think_format_reward"] == [1.0, 0.0]
    assert per["accuracy_reward"] == ([1.0, 0.0] if right_answer else [0.0, 0.0])
    assert per["repetition_penalty_reward"][1] < per["repetition_penalty_reward"][0] <= 0.0  # "no no no ..." repeats
    assert per["soft_overlong_punishment_reward"] == [
        0.0 if len(i) <= 20 else pytest.approx(-(len(i) - 20) / 20) for i in ids
    ]
    assert all(math.isfinite(v) for v in per["cosine_scaled_reward"])
    # the user's function got TRL's keywords
    import sys

    seen = sys.modules["spy_rewards"].SEEN[-1]
    assert seen["ids"] == ids and seen["step"] == 2 and seen["max"] == 7 and seen["solution"] == [solution] * 2
    assert {"answer", "question"} <= set(seen["keys"])
    assert per["spy"] == [float(len(i)) for i in ids]
    out = actor.finish(3, GroupResult("a", loss=0.0, grad_norm=0.0, lr=1e-5), 0.1, 0.1)
    assert json.loads(out.metrics["reward_log"]) == {"spy_calls": 1.0}
    logged = [json.loads(s["reward_log"]) for s in out.samples]
    assert [x["spy_len"] for x in logged] == [len(RIGHT), len(WRONG)]
    assert [x["solution"] for x in logged] == [solution] * 2  # TRL's accuracy_reward logs its own columns too


@pytest.mark.slow
def test_a_reward_that_fails_on_every_call_of_step_one_is_a_config_error(tmp_path):
    """exit 2 with the function's error, no traceback, no run directory left behind."""
    (tmp_path / "broken.py").write_text("def broken(prompts, completions, **kw):\n    raise KeyError('solution')\n")
    (tmp_path / "c.yaml").write_text("""
steps: 3
grpo: {prompts_per_step: 1, group_size: 2, max_completion_length: 8}
groups:
  - name: a
    rewards: [{name: format_exact}, {name: "broken:broken"}]
  - name: b
    rewards: [{name: format_exact}, {name: "broken:broken"}]
""")
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "reward function 'broken' failed on every call of step 1" in proc.stderr and "KeyError" in proc.stderr
    assert not (tmp_path / "run").exists()
