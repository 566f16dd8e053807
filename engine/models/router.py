"""Pick the group whose domain fits a prompt: ``lorapop chat RUN_DIR --group auto``.

A nearest-centroid classifier over the groups' own training prompts, no model and no extra library:
each prompt (its user text) becomes a vector of hashed character 3-grams (counts, L2-normalised); a
group's centroid is the mean of its prompts' vectors; a new prompt goes to the group of the most
cosine-similar centroid. Character n-grams see domain words and the language alike (a Vietnamese
medical group and an English one get apart), and hashing keeps it a fixed-size numpy array.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 4096  # hashed 3-gram buckets
NGRAM = 3


def features(text: str) -> np.ndarray:
    """[DIM] L2-normalised counts of ``text``'s hashed character 3-grams (lower-cased, padded).

    >>> v = features("Dose of ibuprofen?")
    >>> round(float(v @ v), 6), float(v @ features("What is 2 + 2?")) < 0.5
    (1.0, True)
    """
    padded = f"  {text.lower()}  "
    v = np.zeros(DIM, dtype=np.float64)
    for i in range(len(padded) - NGRAM + 1):
        v[zlib.crc32(padded[i : i + NGRAM].encode("utf-8")) % DIM] += 1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def prompt_text(prompt) -> str:
    """The user's text of a prompt (a chat's user turns, or a plain string)."""
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt if m.get("role") == "user")
    return str(prompt)


@dataclass
class Router:
    """Group names and their centroids ([groups, DIM])."""

    groups: list[str]
    centroids: np.ndarray

    @classmethod
    def fit(cls, examples: Mapping[str, Sequence[str]]) -> Router:
        """From each group's example prompts (user text)."""
        groups = [g for g, texts in examples.items() if texts]
        if not groups:
            raise ValueError("no group has prompts to route by")
        centroids = np.stack([np.mean([features(t) for t in examples[g]], axis=0) for g in groups])
        return cls(groups, centroids / np.linalg.norm(centroids, axis=1, keepdims=True))

    def route(self, text: str) -> str:
        """The group whose centroid is most similar to ``text``."""
        return self.groups[int(np.argmax(self.centroids @ features(text)))]


def run_router(run_dir: str | Path, prompts_per_group: int = 64) -> Router:
    """A router over a run's groups (game agents excepted), fit on ``prompts_per_group`` of each group's
    training prompts (its env's first steps, as training drew them)."""
    from engine.config.builders import build_env
    from engine.config.loading import ConfigError
    from engine.config.schema import GameEnvConfig
    from engine.models.adapters import run_plans

    examples: dict[str, list[str]] = {}
    for plan in run_plans(run_dir).values():
        if isinstance(plan.env, GameEnvConfig):
            continue
        env = build_env(plan.env, plan.seed, plan.tags, plan.eval_seed)
        per_step = plan.grpo.prompts_per_step
        rows = [r for step in range(1, prompts_per_group // per_step + 2) for r in env.batch(step, per_step)]
        examples[plan.name] = [prompt_text(r["prompt"]) for r in rows[:prompts_per_group]]
    try:
        return Router.fit(dict(examples))
    except ValueError as e:
        raise ConfigError(f"{run_dir}: {e} (game agents are not routed to)") from None
