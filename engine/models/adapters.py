"""A trained group's model from its run directory alone: ``load_group_model(run_dir, group)``.

A run's adapters are standard PEFT adapters (``<run>/adapters/<group>``), but their
``adapter_config.json`` names the base where the training machine had it (for ``builtin:*`` bases, a
cache path). The run's ``run.json`` records the base as configured too, so the base is found again —
the recorded path where it exists, else the configured name resolved as a run would (``builtin:tiny``
is unpacked offline, a ``builtin:random-*`` rebuilt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def run_base_model(run_dir: str | Path) -> str:
    """The directory of the base model the run's adapters were trained on, on this machine."""
    from engine.config.loading import ConfigError, load_config
    from engine.config.schema import TinyModelConfig
    from engine.models.base import resolve_base_model

    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no readable run.json: {e})") from None
    recorded = info.get("base_model_path")
    if recorded and (Path(recorded) / "config.json").is_file():
        return recorded
    cfg = load_config(run_dir / "config.yaml")[0] if (run_dir / "config.yaml").is_file() else None
    name = info.get("base_model") or (cfg.base_model if cfg else None)  # (older runs: only the config says)
    if name is None:
        raise ConfigError(f"{run_dir}: neither run.json nor a config.yaml names the base model")
    tiny = (cfg.tiny_model if cfg else TinyModelConfig()).model_dump()
    try:
        return resolve_base_model(name, tiny, log=lambda m: None)
    except ValueError as e:
        raise ConfigError(f"{run_dir}: base model {name!r}: {e}") from None


def group_adapter_dir(run_dir: str | Path, group: str) -> Path:
    """The directory of group ``group``'s PEFT adapter in the run (``ConfigError`` naming the groups that
    have one when it has none)."""
    from engine.config.loading import ConfigError

    adapter = Path(run_dir) / "adapters" / group
    if not (adapter / "adapter_config.json").is_file():
        groups = sorted(p.name for p in (Path(run_dir) / "adapters").glob("*") if p.is_dir())
        raise ConfigError(f"{run_dir}: no adapter of group {group!r} (groups with adapters: {groups})")
    return adapter


def run_plans(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``GroupPlan``s by group name, from its ``config.yaml`` (as the run built them)."""
    from engine.config.builders import group_plans
    from engine.config.loading import ConfigError, load_config

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no config.yaml)")
    cfg, config_dir = load_config(config)
    return {p.name: p for p in group_plans(cfg, config_dir)}


def load_group_model(run_dir: str | Path, group: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(PeftModel, tokenizer)``: group ``group``'s adapter of the run on its base model."""
    from peft import PeftModel

    from engine.models.base import load_base, load_tokenizer

    adapter = group_adapter_dir(run_dir, group)
    base = run_base_model(run_dir)
    return PeftModel.from_pretrained(load_base(base, dtype, device), str(adapter)), load_tokenizer(base)
