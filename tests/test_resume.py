"""Exact resume: a run SIGKILLed at several points (during rollout, during a Parquet write, during a
checkpoint) and resumed each time ends with the same tables as an uninterrupted run, row for row."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

CONFIG = """
seed: 9
steps: 6
eval_prompts: 3
grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 24, lr: 0.003}
population:
  checkpoint_interval: 1
  eval_interval: 2
  strategy: exploit_explore
  rebalance_frequency: 3
  performance_threshold: 0.05
  score_window: 2
  quantile_fraction: 0.5
groups:
  - {name: g, num_groups: 2}
  - {name: lazy, cohort: g, grpo: {lr: 0.0}}
"""

KEYS = {
    "steps": ["step", "group"],
    "samples": ["step", "group", "prompt_index", "sample_index"],
    "evals": ["step", "group", "prompt_index", "sample_index"],
    "events": ["step", "group", "kind", "detail"],
}


def tables(run_dir) -> dict[str, pd.DataFrame]:
    out = {}
    for name, keys in KEYS.items():
        df = pd.read_parquet(run_dir / name)
        df = df[[c for c in df.columns if not c.startswith("time/")]]  # wall-clock timings differ by nature
        out[name] = df.sort_values(keys).reset_index(drop=True)
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    out["leaderboard"] = board.drop(columns=["adapter_path"])
    return out


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_path):
    d = tmp_path_factory.mktemp("resume")
    (d / "c.yaml").write_text(CONFIG)
    return d


def test_killed_and_resumed_run_equals_uninterrupted_run(config):
    straight = config / "straight"
    proc = run_cli("run", str(config / "c.yaml"), "--run-dir", str(straight), "-q")
    assert proc.returncode == 0, proc.stderr

    chained = config / "chained"
    kills = ["kill:parquet:2", "kill:checkpoint:4", "kill:rollout:5"]
    proc = run_cli("run", str(config / "c.yaml"), "--run-dir", str(chained), "-q", env={"LORAPOP_FAULTS": kills[0]})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # killed mid-write: the step-2 samples part never appeared, only a hidden temporary
    assert not (chained / "samples" / "part-000002.parquet").exists()
    for fault in kills[1:] + [None]:
        proc = run_cli("run", "--resume", str(chained), "-q", env={"LORAPOP_FAULTS": fault} if fault else None)
        if fault:
            assert proc.returncode == -signal.SIGKILL, proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
    events = pd.read_parquet(chained / "events")
    assert (events["kind"] == "rebalance").any()  # the resumed stretch includes rebalancing state

    a, b = tables(straight), tables(chained)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert len(a["steps"]) == 6 * 3 and not a["steps"].duplicated(KEYS["steps"]).any()


def test_resume_of_a_finished_run_says_so_and_touches_nothing(config):
    """#12: resuming a run that has finished exits 0 at once, saying it is complete; no file changes."""
    straight = config / "straight"  # finished by the test above
    if not (straight / "leaderboard.parquet").is_file():
        proc = run_cli("run", str(config / "c.yaml"), "--run-dir", str(straight), "-q")
        assert proc.returncode == 0, proc.stderr
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in straight.rglob("*") if p.is_file()}
    proc = run_cli("run", "--resume", str(straight), "-q")
    assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr
    assert "leaderboard" in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in straight.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("sig, code, name", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_a_stopped_run_says_where_it_stopped_and_how_to_resume(tmp_path, tiny_model_path, sig, code, name):
    """#12: Ctrl-C (SIGINT to the process group) and a scheduler's SIGTERM end the run cleanly: one
    message with the step and the exact resume command, exit 128 + signal, no traceback, and the
    resume finishes the run."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    (tmp_path / "c.yaml").write_text(
        f"steps: 6\nbase_model: {tiny_model_path}\neval_prompts: 0\n"
        "grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 16}\n"
        "groups:\n  - {name: a}\n"
    )
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "LORAPOP_FAULTS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "-q"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while not (run_dir / "steps" / "part-000002.parquet").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if sig == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert f"stopped ({name}) after step" in err and f"lorapop run --resume {run_dir}\n" in err
    assert "Traceback" not in err
    done = run_cli("run", "--resume", str(run_dir), "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(set(pd.read_parquet(run_dir / "steps")["step"])) == list(range(1, 7))


def test_resume_refuses_what_is_not_a_run(tmp_path):
    proc = run_cli("run", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "not a lorapop run directory" in proc.stderr
    proc = run_cli("run", "configs/default.yaml", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "--resume takes the run directory only" in proc.stderr


def test_no_sigkill_leaves_ray_running(config):
    # sanity for the suite: the killed runs' Ray processes are gone or going (no lorapop actor survives)
    alive = [
        p
        for p in os.popen("ps -eo args").read().splitlines()
        if "ray::GroupActor" in p or "ray::HFRollout" in p or "ray::TrainerService" in p
    ]
    assert alive == [] or all("defunct" in p for p in alive)
