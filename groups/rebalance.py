"""Rebalancing strategies: pure functions from scores to decisions; the coordinator applies them.

A group is a candidate when its relative gap to the best of its cohort,
``(best - score) / |best|``, exceeds ``performance_threshold`` (Isaac Lab's threshold PBT: groups
within the threshold are never touched). Each strategy is a small named function in
``STRATEGIES``:

- ``exploit_explore`` (Ray Tune's PopulationBasedTraining, Jaderberg et al. 2017,
  arXiv:1711.09846): exploit = copy the adapter weights, optimizer state and hyper-parameters of a
  donor drawn from the top ``quantile_fraction`` of the cohort; explore = multiply each perturbed
  hyper-parameter by one of ``perturbation_factors``.
- ``reallocate``: move ``reallocate_prompts`` prompts per step from the trailing group to its
  cohort's best; the cohort's total is unchanged and no group goes below the floor.
- ``none``: only score.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Decision:
    """One rebalancing action; ``old``/``new`` hold the changed hyper-parameters per group."""

    action: str
    group: str
    donor: str | None
    gap: float
    score: float
    donor_score: float
    old: dict[str, dict] = field(default_factory=dict)
    new: dict[str, dict] = field(default_factory=dict)


def relative_gaps(scores: dict[str, float], cohorts: dict[str, str]) -> dict[str, tuple[float, str]]:
    """``group -> (gap, best group of its cohort)``; a NaN score gets gap NaN (not yet scored)."""
    out: dict[str, tuple[float, str]] = {}
    for cohort in sorted(set(cohorts.values())):
        members = [g for g in cohorts if cohorts[g] == cohort and g in scores]
        scored = [g for g in members if not math.isnan(scores[g])]
        if not scored:
            out.update({g: (math.nan, g) for g in members})
            continue
        best = max(scored, key=lambda g: (scores[g], -members.index(g)))
        for g in members:
            s = scores[g]
            out[g] = (math.nan if math.isnan(s) else (scores[best] - s) / max(abs(scores[best]), 1e-8), best)
    return out


def _ranked(cohort_members: list[str], scores: dict[str, float]) -> list[str]:
    return sorted((g for g in cohort_members if not math.isnan(scores[g])), key=lambda g: -scores[g])


def exploit_explore(
    scores: dict[str, float],
    cohorts: dict[str, str],
    hparams: dict[str, dict],
    threshold: float,
    rng: random.Random,
    quantile_fraction: float = 0.25,
    perturbation_factors=(0.8, 1.2),
    perturb=("lr", "temperature", "beta"),
    **_,
) -> list[Decision]:
    """Trailing groups copy a top donor (weights, optimizer, hyper-parameters), then perturb."""
    gaps = relative_gaps(scores, cohorts)
    decisions = []
    for cohort in sorted(set(cohorts.values())):
        ranked = _ranked([g for g in cohorts if cohorts[g] == cohort], scores)
        top = ranked[: max(1, math.floor(quantile_fraction * len(ranked)))]
        for g in ranked:
            gap = gaps[g][0]
            if g in top or not gap > threshold:
                continue
            donor = rng.choice(top)
            new = dict(hparams[donor])
            for key in perturb:
                new[key] = new[key] * rng.choice(list(perturbation_factors))
            changed = sorted(k for k in new if new[k] != hparams[g][k])
            decisions.append(
                Decision(
                    "exploit_explore",
                    g,
                    donor,
                    gap,
                    scores[g],
                    scores[donor],
                    old={g: {k: hparams[g][k] for k in changed}},
                    new={g: {k: new[k] for k in changed}},
                )
            )
    return decisions


def reallocate(
    scores: dict[str, float],
    cohorts: dict[str, str],
    hparams: dict[str, dict],
    threshold: float,
    rng: random.Random,
    reallocate_prompts: int = 1,
    min_prompts_per_step: int = 1,
    **_,
) -> list[Decision]:
    """Move rollout budget (prompts per step) from trailing groups to their cohort's best."""
    gaps = relative_gaps(scores, cohorts)
    budget = {g: hparams[g]["prompts_per_step"] for g in hparams}
    decisions = []
    for g in sorted(gaps, key=lambda g: -gaps[g][0] if not math.isnan(gaps[g][0]) else 0.0):
        gap, best = gaps[g]
        if not gap > threshold or g == best:
            continue
        move = min(reallocate_prompts, budget[g] - min_prompts_per_step)
        if move <= 0:
            continue
        old = {g: {"prompts_per_step": budget[g]}, best: {"prompts_per_step": budget[best]}}
        budget[g] -= move
        budget[best] += move
        new = {g: {"prompts_per_step": budget[g]}, best: {"prompts_per_step": budget[best]}}
        decisions.append(Decision("reallocate", g, best, gap, scores[g], scores[best], old=old, new=new))
    return decisions


def no_rebalancing(*_, **__) -> list[Decision]:
    """Score only."""
    return []


STRATEGIES: dict[str, Callable[..., list[Decision]]] = {
    "exploit_explore": exploit_explore,
    "reallocate": reallocate,
    "none": no_rebalancing,
}
