"""CONTRIBUTING.md's map of the step names only things that exist (files, functions, classes, config
fields): a renamed function fails this test until the map is updated with it."""

from __future__ import annotations

import re

from tests.conftest import REPO

SOURCES = ("engine", "groups", "rewards", "envs")


def _defined_names() -> set[str]:
    names: set[str] = set()
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names.update(re.findall(r"^\s*(?:def|class)\s+(\w+)", text, re.M))
            names.update(re.findall(r"^\s+(\w+)\s*:\s*[^=\n]+=", text, re.M))  # fields (config, dataclasses)
    return names


def test_every_name_in_the_map_of_the_step_exists():
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## A map of the step", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"`([^`]+)`", section)
    paths = [q for q in quoted if "/" in q]
    symbols = [q for q in quoted if "/" not in q]
    assert paths and symbols
    for path in paths:
        assert (REPO / path).exists(), f"CONTRIBUTING.md names {path}, which does not exist"
    defined = _defined_names()
    for symbol in symbols:
        for part in symbol.split("."):
            assert part in defined, (
                f"CONTRIBUTING.md names {symbol}: no def, class or field {part} in {', '.join(SOURCES)}"
            )
