"""Shared base of the generated domain tasks (``envs/medical.py``, ``envs/legal.py``, ``envs/financial.py``).

A subclass sets ``domain``, ``DIFFICULTIES`` and ``LANGUAGES`` and implements two hooks: ``draw``
(one ``(task, question, params, answer, reasoning)`` from an rng) and ``default_prompt`` (the system
prompt used when none is given). ``batch`` draws from ``random.Random(f"{seed}:{step}")`` and
``eval_rows`` from ``f"{seed}:eval"``; one parameter set in ``HOLDOUT`` (by a CRC of the task and its
parameters, see ``held_out``) is reserved for eval, so a training row never repeats an eval question.

Difficulty 0 of each domain ("facts in the prompt") shows a small table and asks to read or pick
from it; ``table_kind`` draws the kind of question, the same mix in every domain.
"""

from __future__ import annotations

import random
import zlib
from abc import abstractmethod
from fractions import Fraction

from envs.base import Env, make_prompt
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

# What ``GeneratedTaskEnv.draw`` returns: ``(task, question, params, answer, reasoning)``.
Draw = tuple[str, str, dict, str, str]


def round_half_up(x: Fraction, places: int = 0) -> str:
    """``x`` rounded half away from zero to ``places`` decimals, as text (exact: no float ties).

    >>> round_half_up(Fraction(5, 2)), round_half_up(Fraction(-1, 8), 2), round_half_up(Fraction(1, 3), 1)
    ('3', '-0.13', '0.3')
    >>> round_half_up(Fraction(2205, 2))
    '1103'
    """
    scaled = abs(x) * 10**places
    q = int(scaled)
    if scaled - q >= Fraction(1, 2):
        q += 1
    sign = "-" if x < 0 and q else ""
    if places == 0:
        return f"{sign}{q}"
    return f"{sign}{q // 10**places}.{q % 10**places:0{places}d}"


def held_out(task: str, params: dict, holdout: int = 10) -> bool:
    """Whether this parameter set is reserved for eval (deterministic across processes).

    >>> held_out("dose", {"kg": 3, "mg_per_kg": 2}), held_out("dose", {"kg": 3, "mg_per_kg": 2}, holdout=1)
    (False, True)
    """
    return zlib.crc32(f"{task}:{sorted(params.items())}".encode()) % holdout == 0


def table_kind(rng: random.Random) -> str:
    """The kind of a difficulty-0 question: ``forward`` 60% of the time (an entry's value, as written),
    ``reverse`` 30% (the entry with a given value) and ``pick`` 10% (the entry with the highest or
    lowest value). One ``rng.random()`` draw.

    >>> [table_kind(random.Random(s)) for s in range(6)]
    ['reverse', 'forward', 'pick', 'forward', 'forward', 'reverse']
    """
    u = rng.random()
    return "forward" if u < 0.6 else "reverse" if u < 0.9 else "pick"


class TaskEnv(Env):
    """A built-in generated task: answer tags, a default system prompt, rows drawn by ``make_row(rng)``
    from ``random.Random(f"{seed}:{step}")`` (training) or ``f"{seed}:eval"`` (held-out)."""

    DIFFICULTIES: tuple[int, ...] = (1, 2, 3)

    def __init__(
        self,
        seed: int = 0,
        difficulty: int = 1,
        system_prompt: str | None = None,
        reasoning_start: str = REASONING_START,
        reasoning_end: str = REASONING_END,
        solution_start: str = SOLUTION_START,
        solution_end: str = SOLUTION_END,
    ) -> None:
        """``system_prompt=None`` uses ``default_prompt()``, built from these tags."""
        if difficulty not in self.DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {self.DIFFICULTIES}, got {difficulty!r}")
        self.seed, self.difficulty = seed, difficulty
        self.reasoning_start, self.reasoning_end = reasoning_start, reasoning_end
        self.solution_start, self.solution_end = solution_start, solution_end
        self.system_prompt = system_prompt if system_prompt is not None else self.default_prompt()

    @abstractmethod
    def default_prompt(self) -> str:
        """The default system prompt, built from this env's tags."""

    @abstractmethod
    def make_row(self, rng: random.Random) -> dict:
        """Draw one row from ``rng``."""

    def _rows(self, rng: random.Random, n: int, eval_side: bool) -> list[dict]:
        """The next ``n`` rows of ``rng`` (training and eval streams differ by seed only)."""
        return [self.make_row(rng) for _ in range(n)]

    def batch(self, step: int, n: int) -> list[dict]:
        """The ``n`` rows of ``step``, drawn from ``random.Random(f"{seed}:{step}")``."""
        return self._rows(random.Random(f"{self.seed}:{step}"), n, eval_side=False)

    def eval_rows(self, n: int) -> list[dict]:
        """The first ``n`` rows of the held-out stream ``random.Random(f"{held_out_seed}:eval")``."""
        return self._rows(random.Random(f"{self.held_out_seed()}:eval"), n, eval_side=True)

    def solution_text(self, row: dict) -> str:
        """The ideal completion for ``row``: ``<think>20*15=300</think><answer>300</answer>``."""
        return (
            f"{self.reasoning_start}{row['reasoning']}{self.reasoning_end}"
            f"{self.solution_start}{row['answer']}{self.solution_end}"
        )


class GeneratedTaskEnv(TaskEnv):
    """A domain task in a chosen language; rows carry ``question``, ``answer``, ``reasoning``, ``params`` and more.

    One parameter set in ``HOLDOUT`` (by a CRC of task and parameters) is eval-only, so training
    never sees an eval question.
    """

    domain: str = ""
    LANGUAGES: tuple[str, ...] = ("en", "vi")
    HOLDOUT: int = 10  # one parameter set in HOLDOUT is eval-only

    def __init__(
        self,
        seed: int = 0,
        difficulty: int = 1,
        system_prompt: str | None = None,
        reasoning_start: str = REASONING_START,
        reasoning_end: str = REASONING_END,
        solution_start: str = SOLUTION_START,
        solution_end: str = SOLUTION_END,
        language: str = "en",
    ) -> None:
        """``system_prompt=None`` uses ``default_prompt()``, built from these tags, in ``language``."""
        if language not in self.LANGUAGES:
            raise ValueError(f"language must be one of {self.LANGUAGES}, got {language!r}")
        self.language = language
        super().__init__(seed, difficulty, system_prompt, reasoning_start, reasoning_end, solution_start, solution_end)

    @staticmethod
    @abstractmethod
    def prompt_template(
        reasoning_start: str, reasoning_end: str, solution_start: str, solution_end: str, language: str, difficulty: int
    ) -> str:
        """The domain's default instruction (its module's ``default_system_prompt``)."""

    def default_prompt(self) -> str:
        """The domain's default instruction built from this env's tags, in its language, at its difficulty."""
        return self.prompt_template(
            self.reasoning_start,
            self.reasoning_end,
            self.solution_start,
            self.solution_end,
            self.language,
            self.difficulty,
        )

    @abstractmethod
    def draw(self, rng: random.Random) -> Draw:
        """Draw ``(task, question, params, answer, reasoning)`` at this env's difficulty and language."""

    def make_row(self, rng: random.Random) -> dict:
        """Draw one row (training or held-out alike) from ``rng``."""
        task, question, params, answer, reasoning = self.draw(rng)
        return {
            "prompt": make_prompt(question, self.system_prompt),
            "question": question,
            "answer": answer,
            "reasoning": reasoning,
            "difficulty": self.difficulty,
            "domain": self.domain,
            "task": task,
            "language": self.language,
            "params": params,
        }

    def _rows(self, rng: random.Random, n: int, eval_side: bool) -> list[dict]:
        """The next ``n`` rows of ``rng`` on the training (``eval_side=False``) or eval side."""
        rows: list[dict] = []
        while len(rows) < n:
            row = self.make_row(rng)
            if held_out(row["task"], row["params"], self.HOLDOUT) == eval_side:
                rows.append(row)
        return rows
