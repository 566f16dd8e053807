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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def load_reward(
    name: str, params: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None, search: Sequence[str] = ()
) -> Callable:
    """Return the reward callable for ``name``.

    Args:
        name: a key of ``BUILTIN_REWARDS`` or a ``module:function`` / ``file.py:function`` spec.
        params: keyword arguments for the built-in factory (or the user factory).
        defaults: shared settings (e.g. a group's tags) passed to a built-in only for the keywords
            it accepts; ``params`` win over them. Not passed to user code.
        search: the user's folders (working directory, config folder), searched first for a
            ``module:function`` module: a user file named like one of lorapop's own packages
            (``rewards``, ``envs``, ...) is the user's, not lorapop's.

    >>> load_reward("format_exact", defaults={"solution_start": "<S>", "solution_end": "</S>", "lr": 1e-5}).__name__
    'format_exact'
    """
    params = dict(params or {})
    if ":" in name:
        return _load_user(name, params, search)
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


def _load_user(spec: str, params: dict[str, Any], search: Sequence[str] = ()) -> Callable:
    """Import the function named by ``spec``; call it with ``params`` if any (factory)."""
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise RewardLoadError(f"reward spec {spec!r} must look like 'module:function' or 'file.py:function'")
    try:
        with user_paths(search):
            module = _import(module_part, search)
    except Exception as e:  # noqa: BLE001 - any import failure is reported with the spec
        where = f" (looked in {', '.join(search)} and the installed packages)" if search else ""
        raise RewardLoadError(
            f"reward spec {spec!r}: cannot import {module_part!r}{where}: {type(e).__name__}: {e}"
        ) from e
    if not hasattr(module, attr):
        own = module_part.split(".")[0] in LORAPOP_PACKAGES and not _is_users(module, search)
        hint = (
            f"; {module_part!r} is lorapop's own module, and no {module_part.split('.')[0]}.py of yours was found"
            f"{' in ' + ', '.join(search) if search else ''}: rename your file or use 'path/to/file.py:{attr}'"
            if own
            else ""
        )
        raise RewardLoadError(f"reward spec {spec!r}: module {module_part!r} has no attribute {attr!r}{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardLoadError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    if not params:
        return fn
    try:
        reward = fn(**params)
    except Exception as e:  # noqa: BLE001 - a failing user factory is a load error, with its cause
        raise RewardLoadError(
            f"reward spec {spec!r}: factory call with {params} failed: {type(e).__name__}: {e}"
        ) from e
    if not callable(reward):
        raise RewardLoadError(f"reward spec {spec!r}: factory returned a {type(reward).__name__}, not a callable")
    if not hasattr(reward, "__name__"):  # e.g. functools.partial or a callable object
        try:
            reward.__name__ = getattr(fn, "__name__", attr)
        except AttributeError:
            pass
    return reward


LORAPOP_PACKAGES = ("engine", "groups", "rewards", "envs", "configs")
"""lorapop's own top-level packages: a user module of one of these names is found in the user's folders."""


@contextmanager
def user_paths(folders: Sequence[str]) -> Iterator[None]:
    """The user's folders at the end of ``sys.path`` while inside (so a reward module's own imports of
    its neighbours work), as a group actor has them for good."""
    added = [f for f in folders if f not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for f in added:
            if f in sys.path:
                sys.path.remove(f)


def _import(module_part: str, search: Sequence[str] = ()) -> Any:
    """Import a dotted module name, or a ``.py`` file path under a name derived from its path.

    A dotted name whose top-level module is a file or package in one of the ``search`` folders, while
    ``import`` would find another module of that name first (one of lorapop's own packages, say), is
    loaded from the user's file under a name of its own; anything else is a plain ``import``."""
    if module_part.endswith(".py"):
        return _import_file(Path(module_part).resolve())
    top, _, rest = module_part.partition(".")
    local = _user_module(top, search)
    if local is None:
        return importlib.import_module(module_part)
    found = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    origin = getattr(found, "origin", None)
    if origin is not None and Path(origin).resolve() == local:
        return importlib.import_module(module_part)  # import finds the user's own file anyway
    package = _import_file(local)
    return importlib.import_module(f"{package.__name__}.{rest}") if rest else package


def _lorapops(path: Path) -> bool:
    """``path`` is inside one of lorapop's own packages (a user may work in lorapop's checkout)."""
    root = Path(__file__).resolve().parent.parent
    return any(path.is_relative_to(root / p) for p in LORAPOP_PACKAGES)


def _user_module(top: str, search: Sequence[str]) -> Path | None:
    """``<folder>/<top>.py`` or ``<folder>/<top>/__init__.py`` in the first ``search`` folder that has one
    (lorapop's own packages are never the user's)."""
    for folder in search:
        for candidate in (Path(folder) / f"{top}.py", Path(folder) / top / "__init__.py"):
            if candidate.is_file() and not _lorapops(candidate.resolve()):
                return candidate.resolve()
    return None


def _is_users(module: Any, search: Sequence[str]) -> bool:
    path = getattr(module, "__file__", None)
    return (
        path is not None
        and not _lorapops(Path(path).resolve())
        and any(Path(path).resolve().is_relative_to(Path(f).resolve()) for f in search)
    )


def _import_file(path: Path) -> Any:
    """The module (or package, for an ``__init__.py``) at ``path``, under a name derived from its path."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    package = path.name == "__init__.py"
    stem = path.parent.name if package else path.stem
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # stable across processes, unlike hash()
    module_name = f"lorapop_reward_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    file_spec = importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=[str(path.parent)] if package else None
    )
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
