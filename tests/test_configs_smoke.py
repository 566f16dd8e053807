"""Every shipped YAML in configs/ runs through the CLI for two steps (with a real local Ray), on the
tiny model given as an ordinary local Hugging Face directory rather than ``builtin:tiny``. The configs
that tests/test_config_learning.py runs for longer (and checks that they learn) are not repeated here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, run_cli
from tests.test_config_learning import LEARNING_STEPS

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c.stem not in LEARNING_STEPS)
# gpu.yaml's 8 groups on the CPU: one replica of its 4-replica cohort is the same code path, at 5 groups' cost
SMOKE_OVERRIDES = {"gpu": ["groups.0.num_groups=1"]}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_two_steps(config: Path, tmp_path, tiny_model_path):
    from engine.config.loading import load_config

    overrides = SMOKE_OVERRIDES.get(config.stem, [])
    cfg, _ = load_config(config, overrides)
    run_dir = tmp_path / "run"
    # small batches: this checks that each config runs, not that it learns
    proc = run_cli(
        "run",
        str(config),
        "steps=2",
        "eval_prompts=2",
        f"base_model={tiny_model_path}",
        "grpo.prompts_per_step=1",
        "grpo.group_size=2",
        "grpo.max_completion_length=24",
        *overrides,
        "--run-dir",
        str(run_dir),
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = pd.read_parquet(run_dir / "steps")
    expected = sum(g.num_groups for g in cfg.groups)
    assert len(steps) == 2 * expected and steps["group"].nunique() == expected
    assert len(pd.read_parquet(run_dir / "leaderboard.parquet")) == expected
