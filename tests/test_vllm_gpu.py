"""The ``vllm`` rollout backend on a GPU: adapters change outputs, agree with ``hf``, and publishing switches weights.

    python -m pytest -q -m gpu tests/test_vllm_gpu.py -s     # -s prints the match rates

Skipped cleanly without vLLM or CUDA. Uses a small random Llama (engine/models/random.py) with
peaky next-token distributions (initializer_range 0.1). The ``hf`` backend runs on CPU in fp32; the
vLLM engine runs in LORAPOP_VLLM_TEST_DTYPE (default float16: 3 more mantissa bits than bfloat16, so
the comparison checks the LoRA serving path more than rounding; vLLM's LoRA kernels refuse float32).
Set LORAPOP_GPU_REPORT=path.json to also write the measured numbers there.
"""

from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

pytestmark = pytest.mark.gpu

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
DIMS = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4}
DTYPE = os.environ.get("LORAPOP_VLLM_TEST_DTYPE", "float16")
# tolerances per engine dtype: mean |logprob diff| vs hf fp32, share of greedy tokens hf also picks
TOL = {
    "float16": {"logprob": 0.05, "near_argmax": 0.97, "greedy_tokens": 0.6},
    "bfloat16": {"logprob": 0.15, "near_argmax": 0.9, "greedy_tokens": 0.3},
}[DTYPE]
REPORT: dict = {"engine_dtype": DTYPE}


def _report(**kw):
    REPORT.update(kw)
    print("GPU-REPORT", json.dumps(kw))
    if os.environ.get("LORAPOP_GPU_REPORT"):
        with open(os.environ["LORAPOP_GPU_REPORT"], "w") as f:
            json.dump(REPORT, f, indent=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from peft import get_peft_model, get_peft_model_state_dict

    from engine.models.base import load_base, peft_lora_config
    from engine.models.random import build_random_llama
    from engine.rollout.hf import HFRollout
    from engine.rollout.vllm import VLLMRollout

    path = str(build_random_llama(tmp_path_factory.mktemp("m") / "model", DIMS, seed=0, initializer_range=0.1))
    template = get_peft_model_state_dict(get_peft_model(load_base(path), peft_lora_config(**LORA)))

    def adapter(seed: int, scale: float) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {
            k: (
                torch.randn(v.shape, generator=g) * scale
                if "lora_B" in k
                else torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5
            )
            for k, v in template.items()
        }

    states = {"zero": adapter(0, 0.0), "A": adapter(1, 0.05), "B": adapter(2, 0.05)}
    groups = {"base": LORA, "a": LORA}
    vllm = VLLMRollout(path, groups, gpu_memory_utilization=0.2, max_model_len=512, enforce_eager=True, dtype=DTYPE)
    hf = HFRollout(path, groups, num_threads=8)
    for svc in (vllm, hf):
        svc.publish("base", 0, states["zero"])  # lora_B = 0: exactly the base model
        svc.publish("a", 0, states["A"])
    rng = random.Random(0)
    prompts = [[rng.randrange(256) for _ in range(rng.randrange(8, 40))] for _ in range(16)]
    yield {"vllm": vllm, "hf": hf, "states": states, "prompts": prompts}
    vllm.close()


def _teacher_forced(hf, group: str, prompt: list[int], completion: list[int], temperature: float = 1.0):
    """The hf backend's (fp32) log-probs of ``completion`` after ``prompt`` with ``group``'s adapter,
    and its max log-prob at each position. Both [L]."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = hf.model(input_ids=ids, adapter_names=[hf.slot[group]]).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0], logp.max(-1).values


def _match(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of identical sequences, share of tokens inside the common prefix)."""
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    prefix = 0
    for x, y in zip(a, b):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        prefix += k
    return same, prefix / sum(max(len(x), len(y)) for x, y in zip(a, b))


def test_adapter_differs_from_base_and_matches_hf_greedy(setup):
    from engine.rollout.types import RolloutRequest

    vllm, hf, prompts = setup["vllm"], setup["hf"], setup["prompts"]
    reqs = [RolloutRequest(g, prompts, n=1, max_new_tokens=24, greedy=True) for g in ("base", "a")]
    v_base, v_a = vllm.generate(reqs)
    h_base, h_a = hf.generate(reqs)
    assert v_a.adapter_version == 0 and len(v_a.completion_ids) == len(prompts)
    differ = sum(x != y for x, y in zip(v_a.completion_ids, v_base.completion_ids)) / len(prompts)
    seq_a, tok_a = _match(v_a.completion_ids, h_a.completion_ids)
    seq_b, tok_b = _match(v_base.completion_ids, h_base.completion_ids)
    # teacher-forced: every vLLM greedy token is hf's argmax up to rounding, log-probs agree
    near_argmax, lp_diff, n = 0, 0.0, 0
    for p, c, lp in zip(prompts, v_a.completion_ids, v_a.logprobs):
        ref, best = _teacher_forced(hf, "a", p, c)
        near_argmax += int((ref >= best - 0.05).sum())
        lp_diff += float((ref - torch.tensor(lp)).abs().sum())
        n += len(c)
    _report(
        adapter_vs_base_differ=differ,
        greedy_seq_match_adapter=seq_a,
        greedy_token_match_adapter=tok_a,
        greedy_seq_match_base=seq_b,
        greedy_token_match_base=tok_b,
        teacher_forced_near_argmax=near_argmax / n,
        teacher_forced_mean_abs_logprob_diff=lp_diff / n,
    )
    assert differ >= 0.75, "the adapter barely changes vLLM's outputs"
    assert near_argmax / n >= TOL["near_argmax"] and lp_diff / n < TOL["logprob"]
    assert tok_a >= TOL["greedy_tokens"] and tok_b >= TOL["greedy_tokens"]


def test_sampling_is_seeded_prompt_major_with_logprobs_after_temperature(setup):
    from engine.rollout.types import RolloutRequest

    vllm, hf, prompts = setup["vllm"], setup["hf"], setup["prompts"][:4]
    req = RolloutRequest("a", prompts, n=3, max_new_tokens=32, temperature=0.7, seed=5)
    batch = [req, RolloutRequest("base", prompts, n=2, max_new_tokens=8, seed=1)]
    r1, _ = vllm.generate(batch)
    r2, _ = vllm.generate(batch)
    # same batch, same adapter versions, same seeds -> mostly the same completions. Not all: vLLM is
    # not batch-invariant, and the second call hits the prefix cache, which changes kernel rounding,
    # so a sampled sequence may drift at a near-tie (measured on an H100: 1 of 12 differed once).
    same = sum(a == b for a, b in zip(r1.completion_ids, r2.completion_ids)) / len(r1.completion_ids)
    _report(resampled_same_completions=same)
    assert same >= 0.5
    assert r1.prompt_ids == [p for p in prompts for _ in range(3)]
    assert len(set(map(tuple, r1.completion_ids[:3]))) > 1, "n samples of one prompt should differ"
    diffs = []
    for p, c, lp, fin in zip(r1.prompt_ids, r1.completion_ids, r1.logprobs, r1.finish_reasons):
        assert len(lp) == len(c) and fin in ("stop", "length")
        assert (fin == "stop") == (c[-1] == hf.tokenizer.eos_token_id)
        ref, _ = _teacher_forced(hf, "a", p, c, temperature=0.7)
        diffs.append(float((ref - torch.tensor(lp)).abs().mean()))
    _report(sampled_logprob_mean_abs_diff_T07=sum(diffs) / len(diffs))
    assert sum(diffs) / len(diffs) < TOL["logprob"], (
        "vLLM log-probs should be log_softmax(logits / T) of the sampled tokens"
    )


def test_publish_switches_weights_for_next_rollout(setup):
    from engine.rollout.types import RolloutRequest

    vllm, hf, states, prompts = setup["vllm"], setup["hf"], setup["states"], setup["prompts"][:8]
    req = RolloutRequest("a", prompts, n=2, max_new_tokens=24, temperature=1.0, seed=9)
    (before,) = vllm.generate([req])
    old_dir = vllm.current["a"].lora_path
    vllm.publish("a", 1, states["B"])
    hf.publish("a", 1, states["B"])
    (after,) = vllm.generate([req])
    assert after.adapter_version == 1 and vllm.adapter_versions()["a"] == 1
    assert not os.path.exists(old_dir), "the old version's directory should be gone"
    # the new tokens' vLLM log-probs are the new adapter's (hf teacher-forced with B), not the old one's
    d_new, d_old = [], []
    for p, c, lp in zip(after.prompt_ids, after.completion_ids, after.logprobs):
        new, _ = _teacher_forced(hf, "a", p, c)
        d_new.append(float((new - torch.tensor(lp)).abs().mean()))
    hf.publish("a", 0, states["A"])
    for p, c, lp in zip(after.prompt_ids, after.completion_ids, after.logprobs):
        old, _ = _teacher_forced(hf, "a", p, c)
        d_old.append(float((old - torch.tensor(lp)).abs().mean()))
    # publishing A again brings back A's completions exactly (same seeds), prefix cache included
    vllm.publish("a", 2, states["A"])
    (again,) = vllm.generate([req])
    same = sum(x == y for x, y in zip(again.completion_ids, before.completion_ids)) / len(before.completion_ids)
    ms = vllm.last_publish
    _report(
        after_publish_logprob_diff_vs_new=sum(d_new) / len(d_new),
        vs_old=sum(d_old) / len(d_old),
        republish_same_completions=same,
        publish_ms_small_model={k: v * 1e3 for k, v in ms.items()},
    )
    assert sum(d_new) / len(d_new) < TOL["logprob"] and sum(d_old) / len(d_old) > 1.0
    assert after.completion_ids != before.completion_ids
    assert same >= 0.9


def test_gpu_config_runs_end_to_end_and_writes_parquet(tmp_path):
    """``lorapop run configs/gpu.yaml`` with a short step budget: vLLM rollouts, group actors on the GPU."""
    import pandas as pd

    from tests.conftest import REPO, run_cli

    run_dir = tmp_path / "gpu-run"
    proc = run_cli(
        "run",
        str(REPO / "configs" / "gpu.yaml"),
        "steps=3",
        "eval_prompts=4",
        "population.eval_interval=0",
        "--run-dir",
        str(run_dir),
        "-q",
        timeout=560,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    steps = pd.read_parquet(run_dir / "steps")
    assert len(steps) == 3 * 8 and steps["group"].nunique() == 8
    assert (steps["time/publish_s"] > 0).all() and steps["is_weight_mean"].notna().all()
    assert steps.groupby("group")["adapter_version"].apply(list).map(lambda v: v == [0, 1, 2]).all()
    _report(
        run_publish_ms_median=float(steps["time/publish_s"].median() * 1000),
        run_logprob_mismatch=float(steps["logprob_mismatch"].mean()),
        run_is_weight_mean=float(steps["is_weight_mean"].mean()),
        run_rollout_s_median=float(steps["time/rollout_s"].median()),
    )
    assert len(pd.read_parquet(run_dir / "leaderboard.parquet")) == 8
