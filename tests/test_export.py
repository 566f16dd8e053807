"""``lorapop export``: a trained group's adapter in PEFT format, or the base with it merged in as a plain
Hugging Face model directory; both give the log-probs of base + adapter. ``lorapop chat``: the group's
replies on the CPU. Bad input exits 2 and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # trains a run through a local Ray cluster first

CONFIG = """
steps: 2
base_model: builtin:tiny
eval_prompts: 0
grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 24, lr: 0.02}
groups:
  - name: sums
    env: {type: arithmetic, difficulty: 1}
    rewards: [{name: format_approx}]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "c.yaml").write_text(CONFIG)
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "-q")
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


def logprobs(model, tok) -> torch.Tensor:
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False) + "<think>3+4=7"
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


def test_the_exported_adapter_and_merged_model_give_the_groups_log_probs(run_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models.adapters import load_group_model

    trained, tok = load_group_model(run_dir, "sums")
    expected = logprobs(trained.eval(), tok)
    base = AutoModelForCausalLM.from_pretrained(trained.peft_config["default"].base_model_name_or_path).eval()
    assert not torch.allclose(logprobs(base, tok), expected, atol=1e-4)  # the adapter changed something

    proc = run_cli("export", str(run_dir), "--group", "sums", "--out", str(tmp_path / "adapter"))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    fresh = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    adapter = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    assert torch.allclose(logprobs(adapter, AutoTokenizer.from_pretrained(tmp_path / "adapter")), expected, atol=1e-5)

    proc = run_cli("export", str(run_dir), "--group", "sums", "--merged")
    assert proc.returncode == 0, proc.stderr
    merged_dir = run_dir / "export" / "sums-merged"
    assert str(merged_dir) in proc.stdout and not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    merged_tok = AutoTokenizer.from_pretrained(merged_dir)
    assert merged_tok.chat_template == tok.chat_template
    assert torch.allclose(logprobs(merged, merged_tok), expected, atol=1e-5)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--group", "nope"], "no adapter of group 'nope'"),
        (["--group", "sums", "--out", "{existing}"], "already exists"),
    ],
)
def test_bad_export_arguments_exit_2_and_write_nothing(run_dir, tmp_path, args, needle):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("export", str(run_dir), *[a.format(existing=existing) for a in args])
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (existing / "keep.txt").read_text() == "mine"
    assert not (run_dir / "export" / "nope").exists()


def test_export_of_a_directory_that_is_no_run_says_so(tmp_path):
    proc = run_cli("export", str(tmp_path), "--group", "sums")
    assert proc.returncode == 2 and "not a lorapop run directory" in proc.stderr, proc.stderr


def test_chat_answers_each_prompt_as_the_groups_env_asks_it(run_dir):
    """Greedy replies of the group's adapter to prompts given on the command line or on stdin, each sent
    with the env's system prompt through the chat template (what the group was trained on)."""
    import subprocess
    import sys

    from engine.models.adapters import load_group_model
    from envs.arithmetic import default_system_prompt
    from tests.conftest import REPO

    model, tok = load_group_model(run_dir, "sums")
    questions = ["What is 2 + 5?", "What is 6 + 1?"]
    expected = []
    for q in questions:
        messages = [{"role": "system", "content": default_system_prompt()}, {"role": "user", "content": q}]
        ids = tok(
            tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            return_tensors="pt",
            add_special_tokens=False,
        ).input_ids
        out = model.eval().generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        expected.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    proc = run_cli(
        "chat", str(run_dir), "--group", "sums", "-p", questions[0], "-p", questions[1], "--max-new-tokens", "24"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected
    piped = subprocess.run(
        [sys.executable, "-m", "engine.cli", "chat", str(run_dir), "-g", "sums", "--max-new-tokens", "24"],
        input="\n".join(questions) + "\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert piped.returncode == 0 and piped.stdout.splitlines() == expected, piped.stderr


def test_chat_with_a_group_the_run_has_not_exits_2(run_dir):
    proc = run_cli("chat", str(run_dir), "--group", "nope", "-p", "hi")
    assert proc.returncode == 2 and "no adapter of group 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_auto_names_the_group_that_answered(run_dir):
    proc = run_cli("chat", str(run_dir), "--group", "auto", "-p", "What is 2 + 5?", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[sums] ") and len(proc.stdout.splitlines()) == 1
