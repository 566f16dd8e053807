"""Weighted scoring of a batch by several reward functions, as TRL's GRPOTrainer does it.

A function that raises or returns something malformed (not a list of numbers or Nones, or an infinite
value) is recorded in ``failures`` and counts as NaN for the whole batch; scoring itself never raises
on a reward function's behalf. NaN, like None, means "no reward for this sample" (TRL's nansum).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class NonFiniteReward(ValueError):
    """A reward function returned an infinite value: a failure of that batch (data, not configuration)."""


@dataclass
class RewardResult:
    """Rewards of one batch.

    A row is *unscorable* when every function gave NaN for it (returned None, or failed on the batch).
    As in TRL's ``GRPOTrainer``, training ignores such a row: ``masked_total`` holds NaN for it, so it
    is left out of its group's mean and std, its advantage is 0 (``engine.trainer.grpo.group_advantages``) and
    it is left out of the step's logged ``reward`` and ``reward_std``. Its ``total`` is 0.0 (the
    ``reward`` of its ``samples`` and ``evals`` rows); its ``reward/<fn>`` columns are null.
    """

    per_function: dict[str, list[float]]
    """Function name -> one reward per sample; NaN where it returned None or failed."""
    total: list[float]
    """Weighted nansum over functions per sample; an unscorable row totals 0.0 (not a real score)."""
    failures: dict[str, str]
    """Function name -> ``"ExceptionType: message"`` for each function that failed on this batch."""

    @property
    def unscorable(self) -> list[bool]:
        """Per sample: True where every function gave NaN."""
        if not self.per_function:
            return [True] * len(self.total)
        return [all(math.isnan(r) for r in rewards) for rewards in zip(*self.per_function.values())]

    @property
    def masked_total(self) -> list[float]:
        """``total`` with NaN for each unscorable row: what advantages and the logged reward are computed from.

        >>> RewardResult({"f": [1.0, math.nan]}, [1.0, 0.0], {}).masked_total
        [1.0, nan]
        """
        return [math.nan if skip else t for t, skip in zip(self.total, self.unscorable)]


def score(
    functions: Sequence[tuple[str, Callable[..., Any], float]],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
) -> RewardResult:
    """Score ``completions`` with each ``(name, fn, weight)``; ``fn(prompts=, completions=, **columns)``.

    Names are used as given: the caller guarantees they are unique (e.g. by suffixing ``_2``, ``_3``).
    ``completion_ids`` is not passed; functions must take ``**kwargs`` as TRL requires.

    >>> ones = lambda prompts, completions, **kw: [1.0 for _ in completions]
    >>> skip = lambda prompts, completions, **kw: [None, 2.0]
    >>> r = score([("ones", ones, 0.5), ("skip", skip, 1.0)], ["p", "p"], ["a", "b"], {})
    >>> r.total, r.per_function["skip"][0] != r.per_function["skip"][0]
    ([0.5, 2.5], True)
    """
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"score: {len(prompts)} prompts but {n} completions")
    per_function: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    for name, fn, _ in functions:
        try:
            per_function[name] = _call(fn, prompts, completions, columns, n)
        except Exception as e:  # noqa: BLE001 - a broken reward must not crash the run
            failures[name] = f"{type(e).__name__}: {e}"
            per_function[name] = [math.nan] * n
    if not functions:
        return RewardResult(per_function, [0.0] * n, failures)
    rewards = np.array([per_function[name] for name, _, _ in functions], dtype=np.float64).T  # [B, F]
    weights = np.array([float(w) for _, _, w in functions], dtype=np.float64)  # [F]
    total = np.nansum(rewards * weights[None, :], axis=1)  # [B]
    return RewardResult(per_function, total.tolist(), failures)


def _call(fn: Callable[..., Any], prompts: list, completions: list, columns: dict[str, list], n: int) -> list[float]:
    """Call one reward function and check its output: ``n`` numbers or Nones (-> NaN)."""
    out = fn(prompts=prompts, completions=completions, **columns)
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise TypeError(f"returned a {type(out).__name__}, expected a list of {n} floats")
    out = list(out)
    if len(out) != n:
        raise ValueError(f"returned {len(out)} rewards for {n} completions")
    values: list[float] = []
    for i, r in enumerate(out):
        if r is None:
            values.append(math.nan)
        elif isinstance(r, numbers.Real):
            if math.isinf(r):  # would make every advantage of the group NaN: the function failed on this batch
                raise NonFiniteReward(f"reward {i} is {float(r)}, not a finite number")
            values.append(float(r))  # (NaN: no reward for this sample, as None; TRL sums rewards with nansum)
        else:
            raise TypeError(f"reward {i} is a {type(r).__name__} ({r!r:.40}), expected a float or None")
    return values
