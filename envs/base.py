"""The env contract: ``batch(step, n)`` and ``eval_rows(n)`` return rows (plain dicts).

A row has a ``prompt`` (a list of chat messages, TRL's conversational format, or a plain string),
an ``answer`` (the verifiable answer, as text) and any extra columns, which the trainer passes on
to reward functions as keyword lists.

``batch`` must be a pure function of the env's constructor arguments, ``step`` and ``n``: a resumed
run sees exactly the same data. Derive randomness from ``(seed, step)``, never from hidden state.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from typing import Any


class Env(ABC):
    """A source of prompts with verifiable answers for one group's GRPO steps."""

    # Seed of the held-out set. The replicas of a cohort train on different streams (their own seeds)
    # but are evaluated on one held-out set, the cohort's (engine/config/builders.py sets it); None: ``seed``.
    eval_seed: int | None = None

    def held_out_seed(self) -> int:
        """The seed the held-out set is drawn from: ``eval_seed``, else the env's own ``seed``."""
        return getattr(self, "seed", 0) if self.eval_seed is None else self.eval_seed

    @abstractmethod
    def batch(self, step: int, n: int) -> list[dict]:
        """Return the ``n`` training rows of ``step``; a pure function of (constructor args, step, n)."""

    @abstractmethod
    def eval_rows(self, n: int) -> list[dict]:
        """Return the first ``n`` rows of a fixed held-out set (disjoint from training where possible)."""

    def rows_from(self, start: int, n: int, step: int) -> list[dict]:
        """The ``n`` training rows of ``step`` when ``start`` rows were taken before it. Generated tasks
        draw a step's rows from the step (``batch``); a dataset continues at row ``start``, so a
        ``prompts_per_step`` that changes mid-run (``reallocate``) skips and repeats no row."""
        return self.batch(step, n)

    def drop_prompts(self, keep) -> int:
        """Drop rows for which ``keep(row)`` is False (e.g. over-long prompts); returns how many.

        Generated tasks have nothing to drop; datasets override this.
        """
        return 0


def _template_fields(template: str) -> list[str]:
    """Names of the top-level fields a ``str.format`` template refers to.

    >>> _template_fields("Q: {question} ({topic!r})")
    ['question', 'topic']
    """
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        base = name.split(".", 1)[0].split("[", 1)[0]
        if base and base not in fields:
            fields.append(base)
    return fields


def make_prompt(
    question: str,
    system_prompt: str | None,
    template: str | None = None,
    columns: dict | None = None,
    conversational: bool = True,
) -> list[dict] | str:
    """Build a prompt from a question: optional system message + user message.

    ``template`` is a ``str.format`` string over the row's ``columns`` (``question`` is always
    available), e.g. ``"Question: {question}"``. With ``conversational=False`` the result is a plain
    string (TRL's standard format): the system prompt, a blank line, then the user text.

    >>> make_prompt("What is 2 + 2?", "Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2 + 2?'}]
    >>> make_prompt("2 + 2", None, "Q: {question} ({level})", {"level": 1}, conversational=False)
    'Q: 2 + 2 (1)'
    """
    text = question
    if template is not None:
        values: dict[str, Any] = {"question": question, **(columns or {})}
        fields = _template_fields(template)
        if any(f.isdigit() for f in fields) or "{}" in template:
            raise ValueError(f"prompt template {template!r} must use named fields, e.g. {{question}}")
        missing = [f for f in fields if f not in values]
        if missing:
            raise KeyError(
                f"prompt template {template!r} refers to column(s) {missing} not in the row (columns: {sorted(values)})"
            )
        text = template.format(**values)
    if not conversational:
        return f"{system_prompt}\n\n{text}" if system_prompt else text
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return messages
