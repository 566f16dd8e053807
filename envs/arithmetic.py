"""Built-in offline task: short arithmetic word problems with a worked equation and an answer.

Questions are kept short (<= 70 characters) because the built-in model is byte-level: every
character is a token. Rows come from ``random.Random(f"{seed}:{step}")`` (string seeds are hashed
deterministically by ``random``, unlike the salted builtin ``hash()``), so ``batch`` is pure; eval
rows use the separate ``f"{seed}:eval"`` stream.

Difficulty levels:

1. ``a + b`` with a, b in 1..9;
2. ``a + b`` or ``a - b`` with a, b in 1..20, result >= 0;
3. ``+``, ``-`` or ``*`` with operands in 1..12, result >= 0;
4. two operations (``a + b - c``, ``a - b + c``, ``a + b + c``, ``a - b - c``) with operands in
   1..30, every partial result >= 0.
"""

from __future__ import annotations

import random

from envs.base import make_prompt
from envs.task import TaskEnv
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

DIFFICULTIES = (1, 2, 3, 4)


def default_system_prompt(
    reasoning_start: str = REASONING_START,
    reasoning_end: str = REASONING_END,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
) -> str:
    """The short default instruction built from the tags.

    >>> default_system_prompt()
    'Solve it. Reply as <think>work</think><answer>number</answer>.'
    """
    return f"Solve it. Reply as {reasoning_start}work{reasoning_end}{solution_start}number{solution_end}."


DEFAULT_SYSTEM_PROMPT = default_system_prompt()

_NAMES = ("Tom", "Ana", "Sam", "Mia", "Leo", "Ivy", "Max", "Zoe")
_ITEMS = ("apples", "pens", "coins", "books", "eggs", "cards", "shells", "cups")

# One template list per operator pattern; ``{x}`` placeholders are filled from the row.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "{name} has {a} {item} and gets {b} more. How many {item} now?",
        "A box has {a} {item}. {b} more are added. How many now?",
        "What is {a} + {b}?",
    ),
    "-": (
        "{name} has {a} {item} and gives away {b}. How many are left?",
        "A box holds {a} {item}. {b} are taken. How many are left?",
        "What is {a} - {b}?",
    ),
    "*": (
        "{name} has {a} bags with {b} {item} each. How many {item}?",
        "There are {a} rows of {b} {item}. How many {item} in all?",
        "What is {a} * {b}?",
    ),
    "+-": (
        "{name} has {a} {item}, gets {b}, then gives {c} away. How many now?",
        "What is {a} + {b} - {c}?",
    ),
    "-+": (
        "{name} has {a} {item}, gives {b} away, then gets {c}. How many now?",
        "What is {a} - {b} + {c}?",
    ),
    "++": (
        "{name} has {a} {item}, gets {b}, then {c} more. How many now?",
        "What is {a} + {b} + {c}?",
    ),
    "--": (
        "{name} has {a} {item}, gives {b} away, then {c} more. How many left?",
        "What is {a} - {b} - {c}?",
    ),
}


def _apply(x: int, op: str, y: int) -> int:
    """``x op y`` for op in ``+-*``."""
    return x + y if op == "+" else x - y if op == "-" else x * y


def _operands(rng: random.Random, difficulty: int) -> tuple[str, list[int]]:
    """Draw an operator pattern and operands for ``difficulty`` with non-negative partial results."""
    if difficulty == 1:
        return "+", [rng.randint(1, 9), rng.randint(1, 9)]
    if difficulty == 2:
        ops, hi = rng.choice("+-"), 20
    elif difficulty == 3:
        ops, hi = rng.choice("+-*"), 12
    else:
        ops, hi = rng.choice(("+-", "-+", "++", "--")), 30
    while True:
        nums = [rng.randint(1, hi) for _ in range(len(ops) + 1)]
        value = nums[0]
        ok = True
        for op, y in zip(ops, nums[1:]):
            value = _apply(value, op, y)
            ok = ok and value >= 0
        if ok:
            return ops, nums


class ArithmeticEnv(TaskEnv):
    """Arithmetic word problems; each row carries ``question``, ``answer``, ``reasoning``, ``difficulty``."""

    DIFFICULTIES = DIFFICULTIES

    def default_prompt(self) -> str:
        return default_system_prompt(self.reasoning_start, self.reasoning_end, self.solution_start, self.solution_end)

    def make_row(self, rng: random.Random) -> dict:
        """Draw one row from ``rng``."""
        ops, nums = _operands(rng, self.difficulty)
        value = nums[0]
        for op, y in zip(ops, nums[1:]):
            value = _apply(value, op, y)
        fill = dict(zip("abc", nums), name=rng.choice(_NAMES), item=rng.choice(_ITEMS))
        question = rng.choice(_TEMPLATES[ops]).format(**fill)
        lhs = str(nums[0]) + "".join(f"{op}{y}" for op, y in zip(ops, nums[1:]))
        return {
            "prompt": make_prompt(question, self.system_prompt),
            "question": question,
            "answer": str(value),
            "reasoning": f"{lhs}={value}",
            "difficulty": self.difficulty,
        }
