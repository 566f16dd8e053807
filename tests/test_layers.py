"""The package's layers: each imports only the layers before it (lazy imports inside functions
included), so there are no import cycles and the engine's sub-packages keep one role each."""

from __future__ import annotations

import ast

from tests.conftest import REPO

# Lowest first; a module may import its own layer and those listed before it.
LAYERS = (
    "rewards",
    "envs",
    "engine.config",
    "engine.models",
    "engine.rollout",
    "engine.trainer",
    "groups",
    "engine.results",
    "engine.loop",
    "engine.cli",
)
PACKAGES = ("engine", "groups", "rewards", "envs", "configs")


def layer(module: str) -> str | None:
    for name in sorted(LAYERS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def imports(path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_every_module_imports_only_its_own_layer_and_those_below():
    wrong = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            source = layer(module)
            if source is None:
                continue
            for line, name in imports(path):
                target = layer(name)
                if target is not None and LAYERS.index(target) > LAYERS.index(source):
                    wrong.append(f"{path.relative_to(REPO)}:{line} ({source}) imports {name} ({target})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_every_module_has_a_layer():
    modules = [p for package in PACKAGES if package != "configs" for p in (REPO / package).rglob("*.py")]
    unlayered = [
        str(p.relative_to(REPO)) for p in modules if layer(".".join(p.relative_to(REPO).with_suffix("").parts)) is None
    ]
    assert unlayered == ["engine/__init__.py"], unlayered
