"""``lorapop serve``: the vLLM command it starts (every group's adapter a LoRA module, the rank slot that
holds the largest), its refusal without vLLM and a GPU, and the ``auto`` middleware driven through raw
ASGI calls. A hand-made run directory: configs/multidomain.yaml, and real PEFT adapters (untrained) of
builtin:tiny. The server itself on a GPU: tests/test_serve_gpu.py."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shlex
import shutil

import pytest

from engine.config.builders import build_env, group_plans
from engine.config.loading import load_config
from engine.models.router import prompt_text
from engine.models.serve import ROUTER_ENV, AutoRouter
from tests.conftest import REPO, run_cli

RANKS = {"medical": 8, "medical-vi": 8, "legal": 12, "financial": 4}  # legal's 12 needs vLLM's 16 slot


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_path):
    from peft import get_peft_model

    from engine.models.base import load_base, peft_lora_config

    run = tmp_path_factory.mktemp("serve") / "run"
    run.mkdir()
    shutil.copy(REPO / "configs" / "multidomain.yaml", run / "config.yaml")
    info = {"config_dir": str(run), "base_model": "builtin:tiny", "base_model_path": tiny_model_path}
    (run / "run.json").write_text(json.dumps(info))
    for group, r in RANKS.items():
        model = get_peft_model(load_base(tiny_model_path), peft_lora_config(r, 2 * r, 0.0, "all-linear"))
        model.save_pretrained(str(run / "adapters" / group))
    return run


def held_out(run, n: int = 3) -> dict[str, list]:
    """Each group's first ``n`` held-out prompts (chat messages), which no group trained on."""
    cfg, config_dir = load_config(run / "config.yaml")
    return {
        p.name: [r["prompt"] for r in build_env(p.env, p.seed, p.tags, p.eval_seed).eval_rows(n)]
        for p in group_plans(cfg, config_dir)
    }


def test_print_command_lists_every_groups_adapter_and_the_rank_slot(run_dir):
    proc = run_cli("serve", str(run_dir), "--port", "8123", "--print-command", "--", "--gpu-memory-utilization", "0.5")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    print(proc.stdout)
    assert words[0] == f"{ROUTER_ENV}={run_dir.resolve()}"
    assert words[2:6] == ["-m", "vllm.entrypoints.cli.main", "serve", str(REPO / "engine/models/assets/builtin-tiny")]

    def value(flag: str) -> str:
        return words[words.index(flag) + 1]

    assert "--enable-lora" in words and value("--max-lora-rank") == "16" and value("--max-loras") == "4"
    assert value("--served-model-name") == "builtin:tiny" and value("--port") == "8123"
    assert value("--middleware") == "engine.models.serve.AutoRouter" and value("--dtype") == "bfloat16"
    modules = words[words.index("--lora-modules") + 1 : words.index("--lora-modules") + 1 + len(RANKS)]
    assert sorted(modules) == sorted(f"{g}={(run_dir / 'adapters' / g).resolve()}" for g in RANKS)
    assert words[-2:] == ["--gpu-memory-utilization", "0.5"]  # extra arguments last: they override lorapop's


def can_serve() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(can_serve(), reason="vLLM and a GPU are here: serve would start (tests/test_serve_gpu.py)")
def test_serve_without_vllm_or_a_gpu_says_what_it_needs_and_how_to_chat(run_dir):
    proc = run_cli("serve", str(run_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "needs vLLM and a GPU" in proc.stderr and f"lorapop chat {run_dir} --group NAME|auto" in proc.stderr


def test_serve_of_a_directory_that_is_no_run_or_has_no_adapters_exits_2(tmp_path):
    proc = run_cli("serve", str(tmp_path), "--print-command")
    assert proc.returncode == 2 and "not a lorapop run directory" in proc.stderr, proc.stderr
    (tmp_path / "run.json").write_text("{}")
    proc = run_cli("serve", str(tmp_path))
    assert proc.returncode == 2 and "no group adapters to serve" in proc.stderr, proc.stderr


class Downstream:
    """A stand-in for vLLM's app: records the scope and body it got and answers 200 with the body."""

    def __init__(self) -> None:
        self.scope: dict | None = None
        self.body = b""

    async def __call__(self, scope, receive, send) -> None:
        self.scope, self.body = scope, b""
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def call(middleware, chunks: list[bytes], path: str = "/v1/chat/completions", method: str = "POST"):
    """Send one request (its body in ``chunks``) through ``middleware``: (the scope sent, the response's
    headers, its status, its body)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(sum(map(len, chunks))).encode())]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    inbox = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return scope, dict(sent[0]["headers"]), sent[0]["status"], body


def test_auto_goes_to_the_group_of_each_held_out_prompt_chat_and_completion_alike(run_dir, monkeypatch):
    monkeypatch.setenv(ROUTER_ENV, str(run_dir))  # as `lorapop serve` tells vLLM's process
    app = Downstream()
    middleware = AutoRouter(app)
    for group, prompts in held_out(run_dir).items():
        for prompt in prompts:
            text = prompt_text(prompt)
            parts = [{"role": "user", "content": [{"type": "text", "text": text}]}]
            for request in (
                {"model": "auto", "messages": prompt, "max_tokens": 8},
                {"model": "auto", "messages": parts},
                {"model": "auto", "prompt": text, "temperature": 0},
            ):
                path = "/v1/completions" if "prompt" in request else "/v1/chat/completions"
                _, response, status, _ = call(middleware, [json.dumps(request).encode()], path)
                forwarded = json.loads(app.body)
                assert forwarded == {**request, "model": group} and status == 200, (group, text)
                assert response[b"x-lorapop-group"] == group.encode()
                lengths = [v for k, v in app.scope["headers"] if k == b"content-length"]
                assert lengths == [str(len(app.body)).encode()]


def test_other_models_and_malformed_bodies_pass_through_byte_for_byte(run_dir):
    app = Downstream()
    middleware = AutoRouter(app, str(run_dir))
    named = b'{"model":  "legal", "messages": [{"role": "user", "content": "Fine for \\u00e9?"}]}'
    for chunks, path in [
        ([named[:10], named[10:]], "/v1/chat/completions"),  # a body in two messages
        ([b'{"model": "auto", "messages": [{"role": "user"'], "/v1/chat/completions"),  # malformed JSON
        ([b'["auto"]'], "/v1/completions"),  # JSON, but no object
        ([b'{"model": "auto", "prompt": "x"}'], "/v1/embeddings"),  # a path that is not routed
    ]:
        scope, response, _, _ = call(middleware, chunks, path)
        assert app.body == b"".join(chunks) and app.scope is scope and b"x-lorapop-group" not in response
    scope, response, _, _ = call(middleware, [b""], "/v1/models", "GET")
    assert app.scope is scope and b"x-lorapop-group" not in response


def test_auto_without_user_text_is_a_400_that_says_so(run_dir):
    app = Downstream()
    request = b'{"model": "auto", "prompt": [1, 2, 3]}'
    _, response, status, body = call(AutoRouter(app, str(run_dir)), [request], "/v1/completions")
    assert status == 400 and app.scope is None and response[b"content-type"] == b"application/json"
    assert "no user text" in json.loads(body)["error"]["message"]
