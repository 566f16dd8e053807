"""Gradient accumulation and importance-sampling correction through the real engine."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

CONFIG = """
seed: 1
steps: 2
base_model: {model}
backend: hf
eval_prompts: 0
training: {{micro_batch_tokens: {mb}}}
grpo: {{prompts_per_step: 2, group_size: 4, max_completion_length: 16, lr: 0.01,
        vllm_importance_sampling_correction: {is_}}}
groups:
  - name: g
"""


def _run(tmp_path, model, mb, is_):
    cfg = tmp_path / f"mb{mb}-{is_}.yaml"
    cfg.write_text(CONFIG.format(model=model, mb=mb, is_=str(is_).lower()))
    run_dir = tmp_path / f"run-{mb}-{is_}"
    proc = run_cli("run", str(cfg), "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pd.read_parquet(run_dir / "steps").sort_values("step").reset_index(drop=True)


def test_micro_batches_and_is_correction_leave_training_unchanged_when_sampler_and_trainer_agree(
    tmp_path, tiny_model_path
):
    """Gradient accumulation adds up to the whole batch's loss; on the hf backend the sampler's and the
    trainer's log-probs agree (to ~1e-7), so the importance-sampling weights are ~1 and change nothing."""
    whole = _run(tmp_path, tiny_model_path, 0, False)
    micro = _run(tmp_path, tiny_model_path, 200, True)  # about 3 rows of ~60 tokens per pass
    for col in ("loss", "grad_norm", "reward"):  # step 2's rollouts come from step 1's update: equal too
        assert micro[col].tolist() == pytest.approx(whole[col].tolist(), rel=1e-4, abs=1e-6), col
    assert micro["is_weight_mean"].tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    assert whole["is_weight_mean"].isna().all()
