"""Serve a run's adapters with vLLM's OpenAI-compatible server: ``lorapop serve runs/<run>``.

The command is ``vllm serve BASE --enable-lora --lora-modules GROUP=ADAPTER ...`` (run as
``python -m vllm.entrypoints.cli.main serve``, with this interpreter): a request picks a group's adapter
by its ``model`` (the group's name), the base by the run's base model name. ``AutoRouter``, an ASGI
middleware vLLM loads with ``--middleware``, adds the model name ``auto``: the request goes to the
group whose domain fits its user text (engine/models/router.py), and the response names the group in
``model`` and in an ``x-lorapop-group`` header.

vLLM 0.26.0's flags used here, as read in its wheel: ``--enable-lora``, ``--max-loras``,
``--max-lora-rank`` (vllm/engine/arg_utils.py, choices vllm.config.lora.MaxLoRARanks),
``--lora-modules`` (one flag, several ``name=path`` or JSON items; vllm/entrypoints/openai/cli_args.py
``LoRAParserAction``), ``--served-model-name``, ``--dtype`` and ``--middleware`` (an import path;
a class is added with ``app.add_middleware(cls)``, vllm/entrypoints/openai/api_server.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

ROUTER_ENV = "LORAPOP_ROUTER_RUN_DIR"  # the run directory AutoRouter routes for
AUTO = "auto"  # the model name a client sends to have the router pick the group
ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions")
GROUP_HEADER = b"x-lorapop-group"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def lora_rank_slot(r: int) -> int:
    """The smallest ``--max-lora-rank`` (``max_lora_rank``) vLLM accepts that holds rank ``r``; the
    rollout service's engines use it too.

    >>> lora_rank_slot(8), lora_rank_slot(12), lora_rank_slot(300)
    (8, 16, 320)
    """
    for slot in VLLM_LORA_RANKS:
        if slot >= r:
            return slot
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def run_adapters(run_dir: str | Path) -> dict[str, Path]:
    """Each group's PEFT adapter directory in the run, by group name (``ConfigError`` when none)."""
    from engine.config.loading import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no run.json)")
    found = sorted(p for p in (run_dir / "adapters").glob("*") if (p / "adapter_config.json").is_file())
    if not found:
        raise ConfigError(f"{run_dir}: no group adapters to serve (adapters/<group>/adapter_config.json)")
    adapters = {p.name: p.resolve() for p in found}
    if AUTO in adapters:
        raise ConfigError(f"{run_dir}: a group named {AUTO!r} clashes with the model name that routes requests")
    return adapters


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in a PEFT adapter's config (``r``, or a module's ``rank_pattern`` entry)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def lora_module(name: str, path: Path) -> str:
    """One ``--lora-modules`` item: ``name=path``, or JSON where ``=`` or ``,`` would confuse vLLM's parser."""
    if any(c in name + str(path) for c in "=,"):
        return json.dumps({"name": name, "path": str(path)})
    return f"{name}={path}"


def served_base_name(run_dir: Path) -> str:
    """The model name the base answers to: the base as the run's config named it (e.g. ``builtin:tiny``)."""
    info = json.loads((run_dir / "run.json").read_text())
    return str(info.get("base_model") or Path(info.get("base_model_path") or "base").name)


def serve_dtype(run_dir: Path) -> str:
    """The run's vLLM dtype where it has one vLLM's LoRA kernels take, else bfloat16."""
    from engine.config.loading import load_config

    if not (run_dir / "config.yaml").is_file():
        return "bfloat16"
    dtype = load_config(run_dir / "config.yaml")[0].rollout.dtype
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


def serve_command(
    run_dir: str | Path, host: str = "0.0.0.0", port: int = 8000, extra_args: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)``: the vLLM OpenAI server for the run, every group's adapter a LoRA module named as
    the group, and ``AutoRouter`` for ``model: auto``; ``env`` (added to the caller's) names the run
    for the router. ``extra_args`` go last, so they override lorapop's (``--dtype``, ...)."""
    from engine.config.loading import ConfigError
    from engine.models.adapters import run_base_model

    run_dir = Path(run_dir).resolve()
    adapters = run_adapters(run_dir)
    base = run_base_model(run_dir)  # (first: it says so when run.json is unreadable)
    base_name = served_base_name(run_dir)
    if base_name in adapters or base_name == AUTO:
        raise ConfigError(f"{run_dir}: the base's model name {base_name!r} clashes with a group's or {AUTO!r}")
    try:
        rank = lora_rank_slot(max(adapter_rank(p) for p in adapters.values()))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{run_dir}: cannot read the adapters' LoRA ranks: {e}") from None
    argv = [
        *(sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", base),
        *("--served-model-name", base_name, "--host", host, "--port", str(port), "--dtype", serve_dtype(run_dir)),
        *("--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(rank)),
        *("--lora-modules", *(lora_module(g, p) for g, p in adapters.items())),
        *("--middleware", f"{AutoRouter.__module__}.{AutoRouter.__qualname__}"),
        *extra_args,
    ]
    return argv, {ROUTER_ENV: str(run_dir)}


def serve_requirements(run_dir: str | Path) -> str | None:
    """Why ``lorapop serve`` cannot start vLLM on this machine (None: it can): it needs vllm installed and
    a CUDA GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        missing = "vllm is not installed"
    else:
        import torch

        if torch.cuda.is_available():
            return None
        missing = "no CUDA GPU is visible"
    return (
        f"lorapop serve needs vLLM and a GPU ({missing}); on the CPU, answer prompts with the hf backend: "
        f"lorapop chat {run_dir} --group NAME|auto"
    )


def served_router(run_dir: str | Path):
    """The run's router (engine/models/router.py) restricted to the groups that have an adapter."""
    from engine.config.loading import ConfigError
    from engine.models.router import Router, run_router

    router, served = run_router(run_dir), run_adapters(run_dir)
    keep = [i for i, g in enumerate(router.groups) if g in served]
    if not keep:
        raise ConfigError(f"{run_dir}: none of the routed groups {router.groups} has an adapter")
    return Router([router.groups[i] for i in keep], router.centroids[keep])


def request_text(request: dict[str, Any]) -> str:
    """The user text of a chat (its user messages: string content, or the text parts of a list) or of a
    completion (its prompt: a string, or a list of strings); empty when there is none to route by.

    >>> request_text({"messages": [{"role": "system", "content": "Be brief."},
    ...     {"role": "user", "content": [{"type": "text", "text": "Dose"}, {"type": "image_url"}]}]})
    'Dose'
    >>> request_text({"prompt": ["What is", "2 + 2?"]}), request_text({"prompt": [1, 2]})
    ('What is\\n2 + 2?', '')
    """
    parts: list[str] = []
    for m in request.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) and m.get("role") == "user" else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts += [p for p in prompt if isinstance(p, str)]
    return "\n".join(parts)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AutoRouter:
    """Pure ASGI middleware: a POST to /v1/chat/completions or /v1/completions whose JSON body asks for
    ``"model": "auto"`` gets the routed group's name as its model (body and content-length rewritten)
    and an ``x-lorapop-group`` response header. Any other request, or a body that is not a JSON
    object, passes on as it came (vLLM answers it). The router is fit once, at the first ``auto``
    request, for the run directory in ``$LORAPOP_ROUTER_RUN_DIR`` (or ``run_dir``); when it cannot be
    (a run of game agents only), or a request has no user text, it gets a 400 that says why."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], run_dir: str | None = None) -> None:
        self.app = app
        self.run_dir = run_dir
        self._router: Any = None

    def route(self, text: str) -> str:
        """The group for ``text`` (fitting the router on first use: no await in between, so once)."""
        if self._router is None:
            run_dir = self.run_dir or os.environ.get(ROUTER_ENV)
            if not run_dir:
                raise ValueError(f"no run directory to route for (${ROUTER_ENV} is not set)")
            self._router = served_router(run_dir)
        return self._router.route(text)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTED_PATHS:
            await self.app(scope, receive, send)
            return
        messages = await _read_request(receive)
        request = _auto_request(messages)
        if request is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        text = request_text(request)
        if not text:
            await _bad_request(send, f"model {AUTO!r}: the request has no user text to choose a group by")
            return
        try:
            group = self.route(text)
        except (ValueError, OSError) as e:  # (ConfigError is a ValueError; a dataset file may be missing)
            await _bad_request(send, f"model {AUTO!r}: cannot choose a group: {e}")
            return
        body = json.dumps({**request, "model": group}).encode("utf-8")
        # the body is now one message of known length: its old length (or chunked framing) no longer holds
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))

        async def send_with_group(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (GROUP_HEADER, group.encode())]}
            await send(message)

        request_message = {"type": "http.request", "body": body, "more_body": False}
        await self.app({**scope, "headers": headers}, _replay([request_message], receive), send_with_group)


async def _read_request(receive: Receive) -> list[Message]:
    """The request's messages up to the end of its body (or the client's disconnect)."""
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    return messages


def _auto_request(messages: list[Message]) -> dict[str, Any] | None:
    """The request's JSON object when it is whole and asks for ``auto``, else None."""
    if messages[-1]["type"] != "http.request":
        return None  # the client went away
    try:
        request = json.loads(b"".join(m.get("body", b"") for m in messages))
    except ValueError:  # (UnicodeDecodeError is one)
        return None
    return request if isinstance(request, dict) and request.get("model") == AUTO else None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then defers to ``receive`` (to hear a disconnect)."""
    pending: Iterator[Message] = iter(messages)

    async def replayed() -> Message:
        return next(pending, None) or await receive()

    return replayed


async def _bad_request(send: Send, message: str) -> None:
    """An OpenAI-style 400 error response."""
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("latin-1"))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
