"""User-style reward functions that tests load through ``rewards.registry.load_reward``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NOT_CALLABLE = 42


def my_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """A TRL-style reward written for conversational completions: 1.0 per mention of 'yes'."""
    return [float(c[0]["content"].count("yes")) for c in completions]


def contains(word: str, value: float = 1.0) -> Callable[..., list[float]]:
    """A reward factory: ``value`` if the completion contains ``word``."""

    def contains_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [value if word in c[0]["content"] else 0.0 for c in completions]

    return contains_reward


def not_a_factory(word: str) -> int:
    """A 'factory' that returns a non-callable."""
    return len(word)


def broken_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """A reward that always raises: the run must record the failure and go on."""
    raise RuntimeError("boom from broken_reward")


def breaks_after_step_1(prompts: list, completions: list, trainer_state: Any, **kwargs: Any) -> list[float]:
    """A reward that works in the first step and raises in every later one (a run's bad luck, not a
    configuration error): the run records each failure and goes on."""
    if trainer_state.global_step >= 1:
        raise RuntimeError("boom from breaks_after_step_1")
    return [0.0] * len(completions)


def inf_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """A reward that returns +inf for the first completion of every batch (a division by zero, say)."""
    return [float("inf")] + [0.5] * (len(completions) - 1)
