"""#16: lorapop on a Ray cluster — several devices over several nodes (``ray.cluster_utils.Cluster``:
real raylets on one machine), a node lost mid-run, and ``ray job submit`` to a ``ray start --head``
cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end runs through real Ray clusters (make test-fast leaves them out)

CONFIG = """
seed: 4
steps: 3
eval_prompts: 2
ray: {{devices: 2, torch_threads: 1, address: "{address}"}}
grpo: {{prompts_per_step: 2, group_size: 4, max_completion_length: 32, lr: 0.003}}
population: {{max_restarts: 2, checkpoint_interval: 1}}
groups:
  - {{name: a}}
  - {{name: b}}
  - {{name: c}}
"""


@pytest.fixture
def cluster():
    """A head node with no CPUs (the driver only) and two worker nodes of one CPU each: the run's two
    device bundles (a CPU each, SPREAD) land one per worker. Node deaths are noticed within ~2 s."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def _shape(run_dir: Path, table: str) -> tuple[list, list]:
    """A table's columns and its (step, group) keys, sorted."""
    df = pd.read_parquet(run_dir / table)
    return sorted(df.columns), sorted(zip(df["step"], df["group"]))


def test_groups_spread_over_nodes_and_a_lost_node_ends_in_a_completed_run(tmp_path, cluster, tiny_model_path):
    """Two devices on two nodes: the groups are placed on both. Then the node of group b's device is removed
    after step 1: b moves to the other device and restarts there from the step-1 checkpoint (``lost`` and
    ``restart`` events), the run completes, and every table has the shape of the undisturbed run's."""
    from engine.config.loading import load_config
    from engine.loop.coordinator import run

    c, workers = cluster
    (tmp_path / "c.yaml").write_text(CONFIG.format(address=c.address))
    cfg, config_dir = load_config(tmp_path / "c.yaml")

    straight = tmp_path / "straight"
    assert run(cfg, config_dir, straight, log=lambda m: None).failed_groups == []
    events = pd.read_parquet(straight / "events")
    placed = events[events.kind == "placement"].set_index("group")["detail"]
    assert sorted(placed.index) == ["a", "b", "c"]
    nodes = {g: d.split(" on node ")[1] for g, d in placed.items()}
    assert len(set(nodes.values())) == 2, placed  # both nodes have groups

    disturbed = tmp_path / "disturbed"
    removed: list[str] = []

    def remove_bs_node_after_step_1(row: dict) -> None:
        if row["step"] == 1 and not removed:
            placement = pd.read_parquet(disturbed / "events").query("kind == 'placement'")
            node = placement.set_index("group")["detail"]["b"].split(" on node ")[1]
            c.remove_node(next(w for w in workers if w.node_id == node), allow_graceful=False)
            removed.append(node)

    summary = run(cfg, config_dir, disturbed, on_step=remove_bs_node_after_step_1, log=lambda m: None)
    assert removed and summary.failed_groups == []
    events = pd.read_parquet(disturbed / "events")
    (lost,) = events[events.kind == "lost"].itertuples()
    assert lost.step == 2 and removed[0] in lost.detail and "b" in lost.detail
    placed = events[events.kind == "placement"].set_index("group")["detail"]
    moved = events[events.kind == "restart"]
    assert set(moved["group"]) == {g for g, d in placed.items() if d.endswith(removed[0])}  # b's device's groups
    # (step 1's checkpoint, or the start if the lost trainer had not finished writing step 1's files)
    assert all("checkpoint step 1" in d or "checkpoint step 0" in d for d in moved["detail"])
    for table in ("steps", "samples", "evals"):
        assert _shape(disturbed, table) == _shape(straight, table), table
    steps = pd.read_parquet(disturbed / "steps")
    assert list(steps[steps.group == "b"].sort_values("step")["adapter_version"]) == [0, 1, 2]
    board = pd.read_parquet(disturbed / "leaderboard.parquet")
    assert set(board["status"]) == {"ok"}
    assert all((disturbed / "adapters" / g / "adapter_config.json").is_file() for g in "abc")


def _ray(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """The ``ray`` CLI; a job submitted before the head's job agent is up is submitted again (Ray's own
    answer then is "try again later")."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    for _ in range(30):
        done = subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if "No available agent to submit job" not in done.stderr:
            break
        time.sleep(1)
    return done


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local ``ray start --head --block`` cluster with its dashboard (the job server), token auth off;
    stopped after by signalling its own process (``ray stop`` would stop every Ray on the machine)."""
    import signal
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    args = ["--head", "--block", "--num-cpus=2", f"--port={port}", f"--dashboard-port={dashboard}"]
    # its own agent port: another Ray's agent on this machine (on the default port) would leave the
    # job server without an agent ("No available agent to submit job")
    args += ["--include-dashboard=true", f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}"]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", *args], env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        for _ in range(120):  # the job server answers once the dashboard is up
            if _ray("job", "list", f"--address={address}", env=env, timeout=30).returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops the processes it started
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # anything of it left
            except ProcessLookupError:
                pass


def test_ray_job_submit_of_the_default_config_completes_and_writes_its_run_directory(tmp_path, head, tiny_model_path):
    """As the README documents: ``ray job submit --working-dir . -- lorapop run configs/default.yaml
    --storage-path ABS``; the job's driver joins the cluster and the run directory lands under the
    storage path."""
    address, env = head
    storage = tmp_path / "shared-runs"
    submit = ("job", "submit", f"--address={address}", "--working-dir=.", "--")
    done = _ray(
        *submit, "lorapop", "run", "configs/default.yaml", "steps=1", f"--storage-path={storage}", "-q", env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = storage.iterdir()
    steps = pd.read_parquet(run_dir / "steps")
    assert sorted(set(steps["step"])) == [1] and len(set(steps["group"])) == 3
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert set(board["status"]) == {"ok"}
    assert all(Path(p, "adapter_config.json").is_file() for p in board["adapter_path"])
    shutil.rmtree(storage, ignore_errors=True)


def test_inside_a_ray_job_a_relative_storage_path_is_refused(tmp_path):
    """A job's working directory is a temporary copy: a run directory relative to it would vanish with the
    job. (Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR in a job's driver; refused before Ray starts.)"""
    from tests.conftest import run_cli

    proc = run_cli("run", "steps=1", "-q", cwd=tmp_path, env={"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    assert proc.returncode == 2
    assert "inside a Ray job the working directory is a temporary copy" in proc.stderr
    assert "storage_path" in proc.stderr and not (tmp_path / "runs").exists()
