"""End to end through the CLI with a real local Ray: two groups (built-in task and a JSONL dataset),
Parquet read back, adapters reloaded with PEFT, and GRPO actually learning."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

STEPS = 20

CONFIG = """
seed: 3
steps: {steps}
base_model: {model}
eval_prompts: 8
grpo: {{prompts_per_step: 4, group_size: 8, max_completion_length: 48, lr: 0.002}}
groups:
  - name: arith
    env: {{type: arithmetic, difficulty: 1}}
    rewards:
      - {{name: format_exact}}
      - {{name: answer_numeric}}
      - {{name: "tests.reward_fixtures:my_reward", weight: 0.0}}
      - {{name: "tests.reward_fixtures:inf_reward"}}
  - name: data
    env: {{type: dataset, path: rows.jsonl, template: "{{question}}",
           system_prompt: "Solve it. Reply as <think>work</think><answer>number</answer>."}}
    rewards:
      - {{name: format_exact}}
      - {{name: "tests.reward_fixtures:contains", params: {{word: "</answer>", value: 0.5}}}}
      - {{name: "tests.reward_fixtures:breaks_after_step_1"}}
    grpo: {{beta: 0.04, loss_type: grpo}}
"""


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, tiny_model_path):
    from envs.arithmetic import ArithmeticEnv

    d = tmp_path_factory.mktemp("e2e")
    rows = ArithmeticEnv(seed=11, difficulty=1).batch(0, 40)
    with open(d / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"question": r["question"], "answer": r["answer"], "source": "synthetic"}) + "\n")
    (d / "e2e.yaml").write_text(CONFIG.format(steps=STEPS, model=tiny_model_path))
    run_dir = d / "run"
    proc = run_cli("run", str(d / "e2e.yaml"), "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, proc


def test_run_directory_holds_every_table(e2e_run):
    run_dir, proc = e2e_run
    steps = pd.read_parquet(run_dir / "steps")
    assert sorted(zip(steps["step"], steps["group"])) == sorted(
        (s, g) for s in range(1, STEPS + 1) for g in ("arith", "data")
    )
    for col in [
        "reward",
        "reward/format_exact",
        "accuracy",
        "kl",
        "loss",
        "grad_norm",
        "lr",
        "completion_len_mean",
        "time/rollout_s",
        "time/train_s",
        "time/publish_s",
        "adapter_version",
    ]:
        assert col in steps.columns, col
    # each phase of the step, for benchmarks (bench/e2e.py prints their medians): they add up to no more than it
    phases = [
        "time/begin_s",
        "time/generate_s",
        "time/observe_s",
        "time/prepare_s",
        "time/train_s",
        "time/publish_s",
        "time/finish_s",
    ]
    assert (steps[phases] >= 0).all().all() and (steps[phases].sum(axis=1) <= steps["time/step_s"] + 1e-6).all()
    assert steps.groupby("group")["adapter_version"].apply(list).map(lambda v: sorted(v) == list(range(STEPS))).all()
    samples = pd.read_parquet(run_dir / "samples")
    assert len(samples) == STEPS * 2 * 4 * 8
    assert {"prompt", "completion", "advantage", "finish_reason", "reward/format_exact"} <= set(samples.columns)
    # the advantage of every prompt's group sums to ~0 (group-relative)
    sums = samples.groupby(["step", "group", "prompt_index"])["advantage"].sum()
    assert sums.abs().max() < 1e-3
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert list(board["rank"]) == [1, 2] and set(board["group"]) == {"arith", "data"}
    assert "leaderboard" in proc.stdout
    assert (run_dir / "config.yaml").is_file()
    assert not list(run_dir.rglob(".*.tmp"))  # no half-written part left behind


def test_kl_is_computed_only_where_beta_is_set(e2e_run):
    run_dir, _ = e2e_run
    steps = pd.read_parquet(run_dir / "steps")
    assert (steps.loc[steps.group == "arith", "kl"] == 0).all()
    data = steps[steps.group == "data"].sort_values("step")
    assert data["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # version 0 is the base itself
    assert (data["kl"].iloc[2:] > 0).all()
    # the rollout service served exactly the weights the trainer had: ratios start at 1
    assert (steps["logprob_mismatch"] < 1e-4).all()


def test_broken_reward_is_recorded_not_fatal(e2e_run):
    run_dir, _ = e2e_run
    events = pd.read_parquet(run_dir / "events")
    broken = events[events["detail"].str.contains("boom from breaks_after_step_1")]
    assert set(broken["group"]) == {"data"} and sorted(broken["step"]) == list(range(2, STEPS + 1))
    data = pd.read_parquet(run_dir / "steps").query("group == 'data'").set_index("step").sort_index()
    assert list(data["reward_failures"]) == [0] + [1] * (STEPS - 1)
    assert data.loc[1, "reward/breaks_after_step_1"] == 0.0 and data.loc[2:, "reward/breaks_after_step_1"].isna().all()


def test_an_infinite_reward_counts_as_a_failed_reward(e2e_run):
    """#12: +inf from a reward function fails that function on that batch (an event naming the value);
    it never reaches the advantages, so the group learns from its other rewards and no weight turns
    non-finite."""
    run_dir, _ = e2e_run
    events = pd.read_parquet(run_dir / "events")
    inf = events[(events["kind"] == "reward_failure") & events["detail"].str.contains("inf_reward")]
    assert set(inf["group"]) == {"arith"} and len(inf) == STEPS and inf["detail"].str.contains("reward 0 is inf").all()
    assert not (events["kind"] == "update_skipped").any()
    steps = pd.read_parquet(run_dir / "steps")
    arith = steps[steps.group == "arith"]
    assert (arith["reward_failures"] == 1).all() and arith["reward/inf_reward"].isna().all()
    assert arith["reward"].map(lambda x: x == x and abs(x) < 10).all() and (arith["grad_norm"] > 0).any()


def test_conversational_user_rewards_ran_unchanged(e2e_run):
    run_dir, _ = e2e_run
    samples = pd.read_parquet(run_dir / "samples")
    data = samples[samples.group == "data"]
    # contains(word="</answer>", value=0.5) saw the conversational completion's text
    assert ((data["reward/contains_reward"] == 0.5) == data["completion"].str.contains("</answer>")).all()
    assert (samples.loc[samples.group == "arith", "reward/my_reward"] >= 0).all()


def test_grpo_learns_the_format(e2e_run):
    """Fails if GRPO is broken (e.g. a flipped advantage sign drives the format reward down).

    Measured (first 4 -> last 4 of 20 steps, arith / data) on builds of builtin:tiny under
    ATEN_CPU_CAPABILITY avx512: 0.39 -> 0.67 / 0.35 -> 0.76; avx2: 0.38 -> 0.72 / 0.32 -> 0.70; default
    (shipped): 0.40 -> 0.74 / 0.43 -> 0.77. At lr 3e-3 the format reward swings (avx2 arith 0.40 -> 0.71
    after 16 steps, 0.52 after 20), hence 2e-3."""
    run_dir, _ = e2e_run
    steps = pd.read_parquet(run_dir / "steps").sort_values("step")
    for group, g in steps.groupby("group"):
        first = g["reward/format_exact"].head(4).mean()
        last = g["reward/format_exact"].tail(4).mean()
        print(f"{group}: format reward {first:.2f} -> {last:.2f}")
        assert last > first + 0.2, f"{group}: format reward {first:.2f} -> {last:.2f}"


def test_saved_adapters_reproduce_engine_logprobs(e2e_run, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.trainer.grpo import completion_logprobs

    run_dir, _ = e2e_run
    evals = pd.read_parquet(run_dir / "evals")
    for group in ("arith", "data"):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapters" / group)).eval()
        rows = evals[evals.group == group]
        assert len(rows) == 8 and (rows["adapter_version"] == STEPS).all()
        for _, r in rows.head(4).iterrows():
            ids = torch.tensor([list(r["prompt_ids"]) + list(r["completion_ids"])])
            with torch.no_grad():
                lp = completion_logprobs(model, ids, torch.ones_like(ids), len(r["prompt_ids"]), 1.0)[0]
            assert lp.tolist() == pytest.approx(list(r["logprobs"]), abs=1e-4)
        # and the adapter is not a no-op: the base alone gives other log-probs
        with model.disable_adapter(), torch.no_grad():
            base_lp = completion_logprobs(model, ids, torch.ones_like(ids), len(r["prompt_ids"]), 1.0)[0]
        assert (base_lp - torch.tensor(list(r["logprobs"]))).abs().max() > 1e-3


def test_a_groups_model_loads_from_the_run_directory_alone(e2e_run, tmp_path):
    """#12: run.json and the leaderboard name the base; load_group_model finds it again (the recorded
    path, or the configured builtin:* name resolved on this machine when that path is gone)."""
    import json
    import shutil

    from engine.config.schema import TinyModelConfig
    from engine.models.adapters import load_group_model, run_base_model
    from engine.models.base import resolve_base_model
    from engine.trainer.grpo import completion_logprobs

    run_dir, _ = e2e_run
    info = json.loads((run_dir / "run.json").read_text())
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert set(board["base_model_path"]) == {info["base_model_path"]} and set(board["base_model"]) == {
        info["base_model"]
    }
    model, tok = load_group_model(run_dir, "arith")
    r = pd.read_parquet(run_dir / "evals").query("group == 'arith'").iloc[0]
    ids = torch.tensor([list(r["prompt_ids"]) + list(r["completion_ids"])])
    with torch.no_grad():
        lp = completion_logprobs(model.eval(), ids, torch.ones_like(ids), len(r["prompt_ids"]), 1.0)[0]
    assert lp.tolist() == pytest.approx(list(r["logprobs"]), abs=1e-4) and tok.eos_token is not None
    # on another machine: the recorded path is gone, the configured name is resolved there
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "adapters", moved / "adapters")
    shutil.copy(run_dir / "config.yaml", moved / "config.yaml")
    (moved / "run.json").write_text(json.dumps({**info, "base_model": "builtin:tiny", "base_model_path": "/gone/tiny"}))
    assert run_base_model(moved) == resolve_base_model("builtin:tiny", TinyModelConfig().model_dump())
    load_group_model(moved, "data")
    with pytest.raises(Exception, match="no adapter of group 'nope'.*arith"):
        load_group_model(moved, "nope")


def test_leaderboard_command_prints_the_run(e2e_run):
    run_dir, _ = e2e_run
    proc = run_cli("leaderboard", str(run_dir))
    assert proc.returncode == 0 and "arith" in proc.stdout and "data" in proc.stdout


def test_overlong_dataset_prompts_are_dropped_and_counted(tmp_path, tiny_model_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    rows += [{"question": "Please add these numbers carefully: " + "1 + " * 60 + "1?", "answer": "61"}] * 2
    with open(tmp_path / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "c.yaml").write_text(
        "steps: 1\neval_prompts: 2\ngrpo: {prompts_per_step: 6, group_size: 2, max_prompt_length: 120, max_completion_length: 8}\n"
        "groups:\n  - {name: d, env: {type: dataset, path: rows.jsonl}}\n"
    )
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "-q")
    assert proc.returncode == 0, proc.stderr
    events = pd.read_parquet(tmp_path / "run" / "events")
    (ev,) = events[events.kind == "prompts_dropped"].itertuples()
    assert ev.group == "d" and ev.value == 2 and ev.step == 0
    samples = pd.read_parquet(tmp_path / "run" / "samples")
    assert not samples["prompt"].str.contains("carefully").any() and samples["prompt_index"].nunique() == 6


def test_a_group_that_can_learn_nothing_is_named_once(tmp_path, tiny_model_path):
    """#12: every reward constant (a word the model never writes), so every advantage is 0: after 3 steps
    the console says so once, naming the group and its reward function, and events/ records it."""
    (tmp_path / "c.yaml").write_text(f"""
seed: 1
steps: 5
base_model: {tiny_model_path}
eval_prompts: 0
grpo: {{prompts_per_step: 2, group_size: 4, max_completion_length: 16}}
groups:
  - name: mute
    rewards: [{{name: "tests.reward_fixtures:contains", params: {{word: "@@never@@"}}}}]
""")
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("learns nothing") == 1
    assert "group mute learns nothing" in proc.stderr and "contains_reward" in proc.stderr
    events = pd.read_parquet(tmp_path / "run" / "events")
    (row,) = events[events["kind"] == "no_signal"].itertuples()
    assert row.group == "mute" and row.step == 3


def test_a_run_prints_no_library_chatter(e2e_run):
    """#12: Ray's token-auth notice for lorapop's own cluster and transformers' deprecation warnings are
    not the user's business."""
    _, proc = e2e_run
    for noise in ("Token authentication", "FutureWarning", "past_key_values"):
        assert noise not in proc.stderr + proc.stdout, noise
