"""``lorapop serve`` on a GPU: vLLM's OpenAI server answers the ``openai`` client for each group's adapter
(by name) and for ``auto`` (the group whose domain fits the prompt).

    python -m pytest -q -m gpu tests/test_serve_gpu.py -s                               # -s prints the replies
    LORAPOP_SERVE_RUN=runs/<run> python -m pytest -q -m gpu tests/test_serve_gpu.py -s  # serve a run you have

Without ``LORAPOP_SERVE_RUN`` it first trains a two-domain run (medical, legal) on builtin:tiny (or
``$LORAPOP_SERVE_BASE``) for one step (hf backend, CPU trainer: the GPU is left to the server). Skipped cleanly without vLLM, CUDA or
the ``openai`` client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.gpu

CONFIG = """
steps: 1
base_model: BASE
backend: hf
training: {device: cpu}
eval_prompts: 0
grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 16}
groups:
  - name: medical
    env: {type: medical, difficulty: 1}
    rewards: [{name: format_approx}]
  - name: legal
    env: {type: legal, difficulty: 1}
    rewards: [{name: format_approx}]
"""
START_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    if os.environ.get("LORAPOP_SERVE_RUN"):
        return Path(os.environ["LORAPOP_SERVE_RUN"])
    tmp = tmp_path_factory.mktemp("serve-gpu")
    (tmp / "c.yaml").write_text(CONFIG.replace("BASE", os.environ.get("LORAPOP_SERVE_BASE", "builtin:tiny")))
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """``lorapop serve RUN_DIR`` on a free port: its base URL, once /v1/models answers; killed afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    extra = ["--gpu-memory-utilization", "0.3", "--enforce-eager"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
            + ["--", *extra],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: vLLM's engine processes are killed with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"lorapop serve exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                    models = [m["id"] for m in json.load(r)["data"]]
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"no /v1/models after {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(2)
        print(f"serving {run_dir} at {url}: models {models}")
        yield url, models
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def plans(run_dir) -> dict:
    """The run's groups that have an adapter and a prompt-drawing env (game agents are not routed to)."""
    from engine.config.schema import GameEnvConfig
    from engine.models.adapters import run_plans

    return {
        name: plan
        for name, plan in run_plans(run_dir).items()
        if (run_dir / "adapters" / name / "adapter_config.json").is_file() and not isinstance(plan.env, GameEnvConfig)
    }


def held_out_prompt(plan) -> list[dict]:
    """The first held-out prompt (chat messages, with the env's system prompt) of a group's env."""
    from engine.config.builders import build_env

    return build_env(plan.env, plan.seed, plan.tags, plan.eval_seed).eval_rows(1)[0]["prompt"]


def ask(client, model: str, messages: list[dict]):
    """``(completion, x-lorapop-group header)`` of a short greedy chat completion."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=16, temperature=0, extra_body={"min_tokens": 2}
    )
    return raw.parse(), raw.headers.get("x-lorapop-group")


def test_each_group_answers_by_its_name_and_auto_picks_the_prompts_group(server, plans):
    url, models = server
    assert set(plans) <= set(models), models
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    for name, plan in plans.items():
        messages = held_out_prompt(plan)
        completion, header = ask(client, name, messages)
        reply = completion.choices[0].message.content
        print(f"model={name!r}: response model {completion.model!r}, reply {reply!r}")
        assert completion.model == name and header is None and reply

        completion, header = ask(client, "auto", messages)
        reply = completion.choices[0].message.content
        user = " ".join(m["content"] for m in messages if m["role"] == "user")
        print(
            f"model='auto', prompt of {name} {user!r}: x-lorapop-group {header!r}, model {completion.model!r}, reply {reply!r}"
        )
        assert header == completion.model and reply
        assert plans[header].cohort == plan.cohort  # its group, or a replica of it (replicas share one env)
