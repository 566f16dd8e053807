"""Built-in reward factories; each returns a TRL-style ``fn(prompts, completions, **columns)``.

Tags default to ``<think>...</think><answer>...</answer>``; the parameter names follow Unsloth's
GRPO notebooks (``reasoning_start``, ``reasoning_end``, ``solution_start``, ``solution_end``) so a
group's tag settings can be passed straight through. The returned function's ``__name__`` is the
registry name, which is what gets logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from rewards.text import (
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
    completion_text,
    extract_answer,
    parse_number,
)

RewardFn = Callable[..., list[float | None]]


def _named(fn: RewardFn, name: str) -> RewardFn:
    fn.__name__ = fn.__qualname__ = name
    return fn


def format_exact(
    reasoning_start: str = REASONING_START,
    reasoning_end: str = REASONING_END,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
) -> RewardFn:
    """1.0 if the whole (stripped) completion is ``<think>...</think> <answer>...</answer>``, else 0.0.

    >>> fn = format_exact()
    >>> fn(prompts=["q", "q"], completions=["<think>hm</think>\\n<answer>4</answer>", "4"])
    [1.0, 0.0]
    """
    pattern = re.compile(
        rf"{re.escape(reasoning_start)}.*{re.escape(reasoning_end)}\s*"
        rf"{re.escape(solution_start)}.+?{re.escape(solution_end)}",
        re.DOTALL,
    )

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        texts = (completion_text(c).strip() for c in completions)
        return [1.0 if pattern.fullmatch(t) else 0.0 for t in texts]

    return _named(reward, "format_exact")


def format_approx(
    reasoning_start: str = REASONING_START,
    reasoning_end: str = REASONING_END,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
) -> RewardFn:
    """Unsloth's ``match_format_approximately``, scaled to [-1, 1]: +0.25 per tag seen exactly once, else -0.25.

    >>> fn = format_approx()
    >>> fn(prompts=["q", "q", "q"], completions=["<think>a</think><answer>4</answer>", "<answer>4</answer>", "x"])
    [1.0, 0.0, -1.0]
    """
    tags = (reasoning_start, reasoning_end, solution_start, solution_end)

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        texts = (completion_text(c) for c in completions)
        return [sum(0.25 if t.count(tag) == 1 else -0.25 for tag in tags) for t in texts]

    return _named(reward, "format_approx")


def _answers(name: str, kwargs: dict[str, Any]) -> list[Any]:
    if "answer" not in kwargs:
        raise KeyError(f"reward '{name}' needs a column 'answer'")
    return list(kwargs["answer"])


def answer_exact(solution_start: str = SOLUTION_START, solution_end: str = SOLUTION_END) -> RewardFn:
    """1.0 if the text in the last solution tags equals ``str(answer).strip()``; 0.0 otherwise or if untagged.

    Needs the dataset column ``answer``; a None answer gives None (the sample is skipped).

    >>> fn = answer_exact()
    >>> fn(prompts=["q"] * 3, completions=["<answer> 7 </answer>", "7", "<answer>8</answer>"], answer=[7, 7, None])
    [1.0, 0.0, None]
    """

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for completion, answer in zip(completions, _answers("answer_exact", kwargs), strict=True):
            if answer is None:
                out.append(None)
                continue
            got = extract_answer(completion_text(completion), solution_start, solution_end)
            out.append(1.0 if got is not None and got == str(answer).strip() else 0.0)
        return out

    return _named(reward, "answer_exact")


def answer_numeric(
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-6,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
) -> RewardFn:
    """1.0 if the tagged answer and the ``answer`` column parse to numbers that are ``math.isclose``.

    Unparseable (either side) or untagged gives 0.0; a None answer gives None.

    >>> fn = answer_numeric()
    >>> fn(prompts=["q"] * 3, completions=["<answer>1,234</answer>", "<answer>12.0</answer>", "<answer>x</answer>"],
    ...    answer=["1234", "12", "3"])
    [1.0, 1.0, 0.0]
    """

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for completion, answer in zip(completions, _answers("answer_numeric", kwargs), strict=True):
            if answer is None:
                out.append(None)
                continue
            got = parse_number(extract_answer(completion_text(completion), solution_start, solution_end))
            want = parse_number(str(answer))
            ok = got is not None and want is not None and math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)
            out.append(1.0 if ok else 0.0)
        return out

    return _named(reward, "answer_numeric")


def length_penalty(target: int = 1024, scale: float = 1.0) -> RewardFn:
    """``-scale * max(0, chars - target) / target``: 0 up to ``target`` characters, then linearly negative.

    Counts characters, not tokens (reward functions see text); pick ``target`` accordingly.

    >>> length_penalty(target=4)(prompts=["q", "q"], completions=["abc", "abcdef"])
    [0.0, -0.5]
    """
    if target <= 0:
        raise ValueError(f"length_penalty: target must be > 0, got {target}")

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        over = (len(completion_text(c)) - target for c in completions)
        return [-scale * n / target if n > 0 else 0.0 for n in over]  # 0.0, never -0.0

    return _named(reward, "length_penalty")


def env_reward() -> RewardFn:
    """The reward a multi-turn env or a game gave each episode (its ``env_reward`` column).

    >>> env_reward()(None, ["a", "b"], env_reward=[1.0, 0.5])
    [1.0, 0.5]
    """

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        if "env_reward" not in kwargs:
            raise KeyError(
                "env_reward: this env gives no env_reward column (use it with guess, signaling or negotiation)"
            )
        return [None if r is None else float(r) for r in kwargs["env_reward"]]

    return _named(reward, "env_reward")
