"""Turn a YAML file plus ``key=value`` overrides into a validated ``RunConfig``.

Every problem becomes a ``ConfigError`` whose message names the file and the field
(``groups.1.grpo.group_size``), so the CLI can print it and exit non-zero before anything is written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.config.schema import RunConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


def default_config_path() -> Path:
    """``configs/default.yaml`` as shipped with the package."""
    return Path(str(resources.files("configs").joinpath("default.yaml")))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with file and line in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); a config is YAML text"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)  # where the bad construct starts
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML; list indices allowed)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. steps=5 or grpo.lr=1e-3")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    value = _from_cwd(parts[-1], value)
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r}: '{part}' is not an index of {'.'.join(parts[:i])} (length {len(node)})"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {key!r}: '{'.'.join(parts[:i])}' is not a mapping")


def _from_cwd(key: str, value: Any) -> Any:
    """A file named on the command line is relative to the working directory, not to the config's
    folder: an ``env.path`` (dataset) or a ``path/to/file.py:function`` reward becomes absolute.

    >>> import os; _from_cwd("path", "rows.jsonl") == os.path.join(os.getcwd(), "rows.jsonl")
    True
    """
    if isinstance(value, dict):
        return {k: _from_cwd(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_cwd(key, v) for v in value]
    if not isinstance(value, str) or not value:
        return value
    if key == "path" and not Path(value).expanduser().is_absolute():
        return str(Path.cwd() / Path(value).expanduser())
    module, sep, fn = value.rpartition(":")
    if key in ("name", "rewards") and sep and module.endswith(".py") and not Path(module).is_absolute():
        return f"{Path.cwd() / module}:{fn}"
    return value


def format_validation(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(
            f"  {loc}: {msg}"
            + (
                f" (got {e['input']!r})"
                if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e["input"], dict)
                else ""
            )
        )
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[RunConfig, Path]:
    """Validate a config file (default: the shipped ``default.yaml``) with overrides applied.

    Returns the config and the directory relative dataset paths are resolved against.
    """
    path = Path(path) if path is not None else default_config_path()
    data = read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation(e, str(path))) from None
    return cfg, path.resolve().parent


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``config.yaml`` in a run directory holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
