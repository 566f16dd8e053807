"""The multi-turn env protocol, and a built-in multi-turn task (guess the number).

An episode starts from a row (``batch`` / ``eval_rows``, as for single-turn envs: the row's
``prompt`` is the first observation) and goes on while the env answers the model:

    state = env.reset(row)                     # per episode; rows are pure functions of (seed, step)
    turn = env.step(state, completion_text)    # -> Turn(observation | None, reward, done)

The trainer stops an episode when ``done`` or after ``max_turns`` model turns; the episode's env
reward (the sum of its turns' rewards) reaches reward functions as the ``env_reward`` column, which
the built-in ``env_reward`` reward returns. The GRPO loss covers the model's own tokens only.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from envs.base import Env, make_prompt
from rewards.text import SOLUTION_END, SOLUTION_START, extract_answer, parse_number


@dataclass
class Turn:
    """What the env says after one model turn."""

    observation: str | None = None  # the next user message; None with done
    reward: float = 0.0  # this turn's reward (the episode's env_reward is the sum)
    done: bool = False


class MultiTurnEnv(Env):
    """An env whose episodes have several model turns."""

    max_turns: int = 4

    @abstractmethod
    def reset(self, row: dict) -> Any:
        """A fresh episode state for ``row`` (deterministic: everything it needs is in the row)."""

    @abstractmethod
    def step(self, state: Any, completion: str) -> Turn:
        """Apply the model's turn to ``state`` (in place) and say what comes next."""


class GuessNumberEnv(MultiTurnEnv):
    """Find a secret number in ``1..high``: after each guess the env says "Higher." or "Lower.".

    Reward: 1 for finding it (``decay`` less per extra turn), 0 otherwise; a reply without a number
    in the answer tags gets a reminder and uses up its turn.
    """

    def __init__(
        self,
        seed: int = 0,
        high: int = 8,
        max_turns: int = 3,
        decay: float = 0.25,
        system_prompt: str | None = None,
        solution_start: str = SOLUTION_START,
        solution_end: str = SOLUTION_END,
        **_tags: str,
    ) -> None:
        if high < 2:
            raise ValueError(f"high must be >= 2, got {high}")
        self.seed, self.high, self.max_turns, self.decay = seed, high, max_turns, decay
        self.solution_start, self.solution_end = solution_start, solution_end
        self.system_prompt = (
            system_prompt
            if system_prompt is not None
            else (f"Guess the number. Reply as {solution_start}number{solution_end}.")
        )

    def _row(self, rng: random.Random) -> dict:
        secret = rng.randint(1, self.high)
        question = f"I picked a number from 1 to {self.high}. Guess it."
        return {"prompt": make_prompt(question, self.system_prompt), "answer": str(secret), "high": self.high}

    def batch(self, step: int, n: int) -> list[dict]:
        rng = random.Random(f"{self.seed}:{step}")
        return [self._row(rng) for _ in range(n)]

    def eval_rows(self, n: int) -> list[dict]:
        rng = random.Random(f"{self.held_out_seed()}:eval")
        return [self._row(rng) for _ in range(n)]

    def reset(self, row: dict) -> dict:
        return {"secret": int(row["answer"]), "turn": 0}

    def step(self, state: dict, completion: str) -> Turn:
        state["turn"] += 1
        guess = parse_number(extract_answer(completion, self.solution_start, self.solution_end))
        if guess is None:
            return Turn(f"Reply with a number as {self.solution_start}number{self.solution_end}.")
        if guess == state["secret"]:
            return Turn(None, max(0.0, 1.0 - self.decay * (state["turn"] - 1)), done=True)
        return Turn("Higher." if guess < state["secret"] else "Lower.")
