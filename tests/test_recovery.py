"""Actor recovery: a group actor killed mid-run is restarted from its checkpoint with no step lost;
a group that keeps failing is marked failed while the others finish, and the exit status says so."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

CONFIG = """
seed: 4
steps: 5
eval_prompts: 2
grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 32, lr: 0.003}
population: {max_restarts: 2, checkpoint_interval: 1}
groups:
  - {name: a}
  - {name: b}
"""


@pytest.mark.parametrize("interval", [1, 10])
def test_killed_group_actor_is_restarted_without_lost_steps(tmp_path, tiny_model_path, interval):
    """From the last checkpoint: step 2's with a checkpoint every step; the start (step 0) with the
    default interval of 10, its steps redone. Either way no step is lost and versions carry on."""
    import ray

    from engine.config.loading import load_config
    from engine.loop.coordinator import run
    from engine.loop.population import actor_name

    (tmp_path / "c.yaml").write_text(CONFIG.replace("checkpoint_interval: 1", f"checkpoint_interval: {interval}"))
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    run_dir = tmp_path / "run"
    killed = []

    def kill_b_after_step_2(row: dict) -> None:
        if row["step"] == 2 and row["group"] == "b" and not killed:
            ray.kill(ray.get_actor(actor_name(run_dir, "b"), namespace="lorapop"), no_restart=True)
            killed.append(row["step"])

    summary = run(cfg, config_dir, run_dir, on_step=kill_b_after_step_2, log=lambda m: None)
    assert killed == [2] and summary.failed_groups == []
    steps = pd.read_parquet(run_dir / "steps")
    assert sorted(zip(steps["step"], steps["group"])) == [(s, g) for s in range(1, 6) for g in ("a", "b")]
    events = pd.read_parquet(run_dir / "events")
    (restart,) = events[events.kind == "restart"].itertuples()
    from_step = 2 if interval == 1 else 0
    assert restart.group == "b" and restart.step == 3 and f"checkpoint step {from_step}" in restart.detail
    # restored from the checkpoint (and steps after it redone): the adapter version carries on (2 -> served at step 3)
    b = steps[steps.group == "b"].set_index("step")
    assert list(b["adapter_version"]) == [0, 1, 2, 3, 4]
    assert set(pd.read_parquet(run_dir / "leaderboard.parquet")["status"]) == {"ok"}


def test_when_every_group_fails_the_run_ends_with_exit_1_and_a_complete_leaderboard(tmp_path, tiny_model_path):
    """#12: no crash, no traceback; the message names every group and why; the leaderboard says failed."""
    (tmp_path / "c.yaml").write_text(CONFIG.replace("max_restarts: 2", "max_restarts: 0"))
    run_dir = tmp_path / "run"
    proc = run_cli(
        "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "-q", env={"LORAPOP_FAULTS": "raise:a:2;raise:b:2"}
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "every group failed: a, b" in proc.stderr and proc.stderr.count("injected fault in group") == 2
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert sorted(board["group"]) == ["a", "b"] and set(board["status"]) == {"failed"}
    steps = pd.read_parquet(run_dir / "steps")
    assert sorted(set(steps["step"])) == [1]  # step 1 learned; the run ended with step 2, nothing left to train


def test_group_that_keeps_failing_is_marked_failed(tmp_path, tiny_model_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "-q", env={"LORAPOP_FAULTS": "raise:b:3"}
    )
    assert proc.returncode == 1 and "groups failed: b" in proc.stderr
    steps = pd.read_parquet(run_dir / "steps")
    assert sorted(steps.loc[steps.group == "a", "step"]) == [1, 2, 3, 4, 5]  # the others go on
    assert sorted(steps.loc[steps.group == "b", "step"]) == [1, 2]
    events = pd.read_parquet(run_dir / "events")
    b = events[(events.group == "b") & (events.kind != "runtime")]
    assert list(b["kind"]) == ["restart", "restart", "failed"] and (b["step"] == 3).all()
    assert "injected fault" in b["detail"].iloc[-1]
    board = pd.read_parquet(run_dir / "leaderboard.parquet").set_index("group")
    assert board.loc["b", "status"] == "failed" and board.loc["b", "rank"] == 2 and board.loc["a", "status"] == "ok"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_path):
    """The undisturbed run of CONFIG that a disturbed one must equal: its steps table."""
    from engine.config.loading import load_config
    from engine.loop.coordinator import run

    d = tmp_path_factory.mktemp("straight")
    (d / "c.yaml").write_text(CONFIG)
    cfg, config_dir = load_config(d / "c.yaml")
    summary = run(cfg, config_dir, d / "run", log=lambda m: None)
    assert summary.failed_groups == []
    return _steps(d / "run")


def _steps(run_dir):
    cols = ["step", "group", "reward", "loss", "grad_norm", "adapter_version"]
    return pd.read_parquet(run_dir / "steps")[cols].sort_values(["step", "group"]).reset_index(drop=True)


def _run_killing(tmp_path, service: str):
    """CONFIG run with the ``service`` actor (``lorapop-<service>:<run>``) killed after step 2; returns the
    run directory and its one restart event."""
    import ray

    from engine.config.loading import load_config
    from engine.loop.coordinator import run

    (tmp_path / "c.yaml").write_text(CONFIG)
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    run_dir = tmp_path / "run"
    killed = []

    def kill_after_step_2(row: dict) -> None:
        if row["step"] == 2 and not killed:
            ray.kill(ray.get_actor(f"lorapop-{service}:{run_dir.name}", namespace="lorapop"), no_restart=True)
            killed.append(row["step"])

    summary = run(cfg, config_dir, run_dir, on_step=kill_after_step_2, log=lambda m: None)
    assert killed == [2] and summary.failed_groups == []
    events = pd.read_parquet(run_dir / "events")
    (restart,) = events[events.kind == "restart"].itertuples()
    return run_dir, restart


def test_killed_rollout_service_is_restarted_and_the_run_equals_an_undisturbed_one(tmp_path, straight):
    """#12: the rollout service killed after step 2 is restarted with every group's current adapter, the
    step's requests asked again (a restart event), and the run ends as an undisturbed run does."""
    run_dir, restart = _run_killing(tmp_path, "rollout")
    assert restart.group == "rollout" and restart.step == 3 and "restart 1" in restart.detail
    pd.testing.assert_frame_equal(_steps(run_dir), straight, check_exact=False, rtol=1e-5)


def test_killed_trainer_is_restarted_with_every_slot_and_the_run_equals_an_undisturbed_one(tmp_path, straight):
    """The trainer service holds every group's adapter: killed after step 2, it restarts from the last
    complete checkpoint with all its slots (step 2's, or step 1's when the kill came before the trainer
    had written step 2's files in the background), the steps after it are redone, and the run ends as an
    undisturbed run does."""
    run_dir, restart = _run_killing(tmp_path, "trainer")
    assert restart.group == "trainer" and restart.step == 3
    assert "checkpoint step 2" in restart.detail or "checkpoint step 1" in restart.detail
    pd.testing.assert_frame_equal(_steps(run_dir), straight, check_exact=False, rtol=1e-5)
