"""Shared fixtures: the built-in tiny model (built once, cached) and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lorapop ARGS`` in a fresh process, as a user runs it (``env`` adds variables)."""
    env = {**{k: v for k, v in os.environ.items() if k != "LORAPOP_FAULTS"}, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


TEST_BASE_ENV = "LORAPOP_TEST_BASE_MODEL"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The base model the learning tests train: ``builtin:tiny`` as shipped, or the directory in
    ``$LORAPOP_TEST_BASE_MODEL`` (e.g. a ``lorapop build-tiny --out DIR`` build under other CPU
    kernels, to check that a learning claim does not hang on one build)."""
    from engine.config.schema import TinyModelConfig
    from engine.models.tiny import ensure_tiny_model

    return os.environ.get(TEST_BASE_ENV) or str(ensure_tiny_model(TinyModelConfig().model_dump()))
