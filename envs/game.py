"""Multi-agent games: every agent (role) is a group with its own adapter.

A ``Game`` says whose turn it is and what that agent sees; ``GameEpisodes`` plays the episodes of
one step (each instance ``group_size`` times, so every agent gets GRPO groups of episodes that start
from the same instance) and hands each agent's observations out turn by turn:

    episodes = GameEpisodes(game, agents={"sender": "alice", "receiver": "bob"}, group_size=8)
    rows = episodes.reset(game.batch(step, 4))
    while (obs := episodes.observations()):   # {group: {episode: prompt or user message}}
        ... generate each group's turn with its own adapter ...
        episodes.record(group, replies)        # {episode: reply text}
    episodes.rewards()                         # {group: [reward per episode]}

The coordinator (engine/loop/population.py) batches all groups' turns of a round into one generate call.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any


class Game(ABC):
    """A turn-based game between ``roles``; a state is a plain dict, a row a plain dict with an ``answer``."""

    roles: tuple[str, ...] = ()
    max_turns: int = 2

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def make_row(self, rng: random.Random) -> dict:
        """One game instance (what every episode of it starts from)."""

    def batch(self, step: int, n: int) -> list[dict]:
        rng = random.Random(f"{self.seed}:{step}")
        return [self.make_row(rng) for _ in range(n)]

    def eval_rows(self, n: int) -> list[dict]:
        rng = random.Random(f"{self.seed}:eval")
        return [self.make_row(rng) for _ in range(n)]

    @abstractmethod
    def reset(self, row: dict) -> dict:
        """A fresh episode state for ``row``."""

    @abstractmethod
    def to_move(self, state: dict) -> str | None:
        """The role whose turn it is; None when the episode is over."""

    @abstractmethod
    def observation(self, state: dict, role: str, first: bool) -> list[dict] | str:
        """What ``role`` sees now: its whole first prompt (``first``), else the next user message."""

    @abstractmethod
    def act(self, state: dict, role: str, reply: str) -> None:
        """Apply ``role``'s reply to ``state`` in place."""

    @abstractmethod
    def rewards(self, state: dict) -> dict[str, float]:
        """Each role's reward for a finished (or cut-off) episode."""

    def success(self, state: dict) -> float | None:
        """The game's success measure (the ``accuracy`` metric); None if it has none."""
        return None


class GameEpisodes:
    """The episodes of one step (or evaluation) of one game instance, and whose turn is next."""

    def __init__(self, game: Game, agents: dict[str, str], group_size: int) -> None:
        missing = set(game.roles) - set(agents)
        if missing:
            raise ValueError(f"game {type(game).__name__}: no group plays role(s) {sorted(missing)}")
        self.game, self.agents, self.group_size = game, agents, group_size
        self.n = group_size  # episodes per row of the current reset
        self.role_of = {g: r for r, g in agents.items()}
        self.states: list[dict] = []
        self.turns: list[int] = []
        self.seen: list[set[str]] = []

    def reset(self, rows: list[dict], n: int | None = None) -> list[dict]:
        """Start ``n`` (default ``group_size``) episodes per row; returns the rows."""
        self.n = n or self.group_size
        self.states = [self.game.reset(row) for row in rows for _ in range(self.n)]
        self.turns = [0] * len(self.states)
        self.seen = [set() for _ in self.states]
        return rows

    def observations(self) -> dict[str, dict[int, Any]]:
        """``{group: {episode: observation}}`` for every episode still running, grouped by who moves."""
        out: dict[str, dict[int, Any]] = {}
        for e, state in enumerate(self.states):
            role = self.game.to_move(state) if self.turns[e] < self.game.max_turns else None
            if role is None:
                continue
            first = role not in self.seen[e]
            self.seen[e].add(role)
            out.setdefault(self.agents[role], {})[e] = self.game.observation(state, role, first)
        return out

    def record(self, group: str, replies: dict[int, str]) -> None:
        role = self.role_of[group]
        for e, reply in replies.items():
            self.game.act(self.states[e], role, reply)
            self.turns[e] += 1

    def rewards(self) -> dict[str, list[float]]:
        per_episode = [self.game.rewards(s) for s in self.states]
        return {g: [r[role] for r in per_episode] for role, g in self.agents.items()}

    def success(self) -> list[float | None]:
        return [self.game.success(s) for s in self.states]
