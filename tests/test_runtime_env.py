"""The driver's torch settings reach the Ray actors that run the model: a user or a test can pin the
CPU kernels (``ATEN_CPU_CAPABILITY``) and the threads (``ray.torch_threads``), and every run records
how each actor computed (a ``runtime`` row in events/)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

CONFIG = """
steps: 1
eval_prompts: 0
base_model: {model}
ray: {{torch_threads: 1}}
grpo: {{prompts_per_step: 1, group_size: 2, max_completion_length: 4}}
groups:
  - {{name: a}}
  - {{name: b}}
"""


def test_cpu_kernels_and_threads_reach_every_model_actor(tmp_path, tiny_model_path):
    (tmp_path / "c.yaml").write_text(CONFIG.format(model=tiny_model_path))
    proc = run_cli(
        "run",
        str(tmp_path / "c.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        "-q",
        env={"ATEN_CPU_CAPABILITY": "default"},
    )
    assert proc.returncode == 0, proc.stderr
    events = pd.read_parquet(tmp_path / "run" / "events")
    runtime = events[events.kind == "runtime"].set_index("group")["detail"]
    assert sorted(runtime.index) == ["rollout", "trainer"]  # group actors run no model
    for actor, detail in runtime.items():
        assert "cpu kernels DEFAULT" in detail and "1 threads" in detail, (actor, detail)
