"""Turn a config entry (``name`` + ``params``) into a reward callable.

``name`` is either a built-in (``format_exact``, ...) or a spec naming user code:
``module:function``, ``package.sub:function`` or ``path/to/file.py:function``. With non-empty
``params`` the user function is a factory called with them; otherwise it is the reward itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from rewards.builtin import answer_exact, answer_numeric, env_reward, format_approx, format_exact, length_penalty
from rewards.code_reward import code_exec

BUILTIN_REWARDS: dict[str, Callable[..., Callable[..., list[float | None]]]] = {
    "format_exact": format_exact,
    "format_approx": format_approx,
    "answer_exact": answer_exact,
    "answer_numeric": answer_numeric,
    "length_penalty": length_penalty,
    "code_exec": code_exec,
    "env_reward": env_reward,
}


class RewardLoadError(ValueError):
    """A reward named in the config cannot be built: unknown name, bad spec or bad params."""


def load_reward(name: str, params: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None) -> Callable:
    """Return the reward callable for ``name``.

    Args:
        name: a key of ``BUILTIN_REWARDS`` or a ``module:function`` / ``file.py:function`` spec.
        params: keyword arguments for the built-in factory (or the user factory).
        defaults: shared settings (e.g. a group's tags) passed to a built-in only for the keywords
            it accepts; ``params`` win over them. Not passed to user code.

    >>> load_reward("format_exact", defaults={"solution_start": "<S>", "solution_end": "</S>", "lr": 1e-5}).__name__
    'format_exact'
    """
    params = dict(params or {})
    if ":" in name:
        return _load_user(name, params)
    if name not in BUILTIN_REWARDS:
        raise RewardLoadError(
            f"unknown reward {name!r}; built-ins are {sorted(BUILTIN_REWARDS)}, "
            "or use 'module:function' / 'path/to/file.py:function'"
        )
    factory = BUILTIN_REWARDS[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise RewardLoadError(f"reward {name!r} got unknown param(s) {unknown}; it accepts {accepted}")
    shared = {k: v for k, v in (defaults or {}).items() if k in accepted}
    try:
        return factory(**{**shared, **params})
    except (TypeError, ValueError) as e:
        raise RewardLoadError(f"reward {name!r} could not be built: {type(e).__name__}: {e}") from e


def _load_user(spec: str, params: dict[str, Any]) -> Callable:
    """Import the function named by ``spec``; call it with ``params`` if any (factory)."""
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise RewardLoadError(f"reward spec {spec!r} must look like 'module:function' or 'file.py:function'")
    try:
        module = _import(module_part)
    except Exception as e:  # noqa: BLE001 - any import failure is reported with the spec
        raise RewardLoadError(f"reward spec {spec!r}: cannot import {module_part!r}: {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise RewardLoadError(f"reward spec {spec!r}: module {module_part!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardLoadError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    if not params:
        return fn
    try:
        reward = fn(**params)
    except Exception as e:  # noqa: BLE001 - a failing user factory is a load error, with its cause
        raise RewardLoadError(f"reward spec {spec!r}: factory call with {params} failed: {type(e).__name__}: {e}") from e
    if not callable(reward):
        raise RewardLoadError(f"reward spec {spec!r}: factory returned a {type(reward).__name__}, not a callable")
    if not hasattr(reward, "__name__"):  # e.g. functools.partial or a callable object
        try:
            reward.__name__ = getattr(fn, "__name__", attr)
        except AttributeError:
            pass
    return reward


def _import(module_part: str) -> Any:
    """Import a dotted module name, or a ``.py`` file path under a name derived from its path."""
    if not module_part.endswith(".py"):
        return importlib.import_module(module_part)
    path = Path(module_part).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # stable across processes, unlike hash()
    module_name = f"lorapop_reward_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[module_name] = module  # so pickling/dataclasses inside the file can find it
    try:
        file_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
