"""Built-in task: write a small Python strategy function ``solve(...)``, checked by running tests.

Rows carry ``tests`` (a list of ``{"call": "solve(...)", "expected": <JSON value>}``) for the
``code_exec`` reward (``rewards/code_reward.py``), which runs the completion's code in the sandbox.
The ``answer`` column is the reference solution's source; expected values are computed by running it
here (it is our own code, not a completion). Rows come from ``random.Random(f"{seed}:{step}")``, so
``batch`` is pure; eval rows use the separate ``f"{seed}:eval"`` stream.

Difficulty levels:

1. one-liners over a list or string (largest number, sum of evens, count vowels);
2. tiny games: a winning Nim move, the winning take in a take-away game, X's win-in-one in tic-tac-toe;
3. a little search or dynamic programming: longest increasing subsequence, fewest coins,
   tic-tac-toe minimax value.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envs.base import make_prompt
from envs.task import TaskEnv
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

DIFFICULTIES = (1, 2, 3)

_LINES = "((0,1,2),(3,4,5),(6,7,8),(0,3,6),(1,4,7),(2,5,8),(0,4,8),(2,4,6))"


@dataclass(frozen=True)
class _Task:
    """One puzzle: what to ask, the reference ``solve`` source, and how to draw its arguments."""

    name: str
    question: str
    plan: str
    source: str
    draw_args: Callable[[random.Random], tuple]


def _int_list(rng: random.Random, lo: int = -50, hi: int = 50) -> tuple:
    return ([rng.randint(lo, hi) for _ in range(rng.randint(3, 8))],)


def _word(rng: random.Random) -> tuple:
    return ("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))),)


def _board(rng: random.Random) -> tuple:
    return ("".join(rng.choice("XXO...") for _ in range(9)),)


def _played_board(rng: random.Random) -> tuple:
    """A board after 2 or 4 random moves (X moved first, so X is to move)."""
    cells = list("." * 9)
    for i, square in enumerate(rng.sample(range(9), rng.choice((2, 4)))):
        cells[square] = "XO"[i % 2]
    return ("".join(cells),)


def _coins(rng: random.Random) -> tuple:
    return (sorted(rng.sample(range(2, 12), rng.randint(2, 3))), rng.randint(1, 30))


_TASKS: dict[int, tuple[_Task, ...]] = {
    1: (
        _Task(
            "largest",
            "Write solve(xs) returning the largest number in the list xs.",
            "max of xs",
            "def solve(xs):\n    return max(xs)\n",
            _int_list,
        ),
        _Task(
            "sum_even",
            "Write solve(xs) returning the sum of the even numbers in the list xs.",
            "sum the evens",
            "def solve(xs):\n    return sum(x for x in xs if x % 2 == 0)\n",
            _int_list,
        ),
        _Task(
            "vowels",
            "Write solve(s) returning how many vowels (a, e, i, o, u) the string s has.",
            "count vowels",
            "def solve(s):\n    return sum(c in 'aeiou' for c in s)\n",
            _word,
        ),
    ),
    2: (
        _Task(
            "nim_move",
            "Nim: heaps is a list of pile sizes; a move takes k >= 1 stones from one pile. Write "
            "solve(heaps) returning a winning move (i, k) that makes the XOR of the piles 0, with the "
            "smallest such i, or None if there is none.",
            "xor the piles; find a pile that shrinks",
            "def solve(heaps):\n    total = 0\n    for h in heaps:\n        total ^= h\n"
            "    if total == 0:\n        return None\n    for i, h in enumerate(heaps):\n"
            "        if h ^ total < h:\n            return (i, h - (h ^ total))\n",
            lambda rng: ([rng.randint(1, 9) for _ in range(rng.randint(2, 4))],),
        ),
        _Task(
            "take_away",
            "n stones; players alternately take 1 to m stones; whoever takes the last stone wins. "
            "Write solve(n, m) returning how many stones to take now to win, or 0 if every move loses.",
            "leave a multiple of m + 1",
            "def solve(n, m):\n    return n % (m + 1)\n",
            lambda rng: (rng.randint(1, 30), rng.randint(2, 5)),
        ),
        _Task(
            "ttt_win",
            "Tic-tac-toe: board is a 9-character string of 'X', 'O' and '.', row by row. Write "
            "solve(board) returning the smallest index of an empty cell where X completes a line, or -1.",
            "try each empty cell",
            f"LINES = {_LINES}\n\n"
            "def solve(board):\n    for i in range(9):\n        if board[i] == '.':\n"
            "            b = board[:i] + 'X' + board[i + 1:]\n"
            "            if any(all(b[j] == 'X' for j in line) for line in LINES):\n"
            "                return i\n    return -1\n",
            _board,
        ),
    ),
    3: (
        _Task(
            "lis",
            "Write solve(xs) returning the length of the longest strictly increasing subsequence of xs.",
            "dp over prefixes",
            "def solve(xs):\n    best = [1] * len(xs)\n    for i in range(len(xs)):\n        for j in range(i):\n"
            "            if xs[j] < xs[i]:\n                best[i] = max(best[i], best[j] + 1)\n"
            "    return max(best, default=0)\n",
            lambda rng: _int_list(rng, 0, 20),
        ),
        _Task(
            "coins",
            "Write solve(coins, amount) returning the fewest coins (unlimited of each value in coins) "
            "summing to amount, or -1 if impossible.",
            "dp over amounts",
            "def solve(coins, amount):\n    inf = float('inf')\n    best = [0] + [inf] * amount\n"
            "    for a in range(1, amount + 1):\n        for c in coins:\n"
            "            if c <= a and best[a - c] + 1 < best[a]:\n                best[a] = best[a - c] + 1\n"
            "    return -1 if best[amount] == inf else best[amount]\n",
            _coins,
        ),
        _Task(
            "ttt_value",
            "Tic-tac-toe: board is a 9-character string of 'X', 'O' and '.', row by row, X to move. "
            "Write solve(board) returning 1 if X can force a win, -1 if O can, 0 if best play draws.",
            "minimax",
            f"LINES = {_LINES}\n\n"
            "def won(b, p):\n    return any(all(b[j] == p for j in line) for line in LINES)\n\n"
            "def solve(board, player='X'):\n    other = 'O' if player == 'X' else 'X'\n"
            "    if won(board, other):\n        return -1\n    moves = [i for i in range(9) if board[i] == '.']\n"
            "    if not moves:\n        return 0\n"
            "    return max(-solve(board[:i] + player + board[i + 1:], other) for i in moves)\n",
            _played_board,
        ),
    ),
}


@functools.cache
def _reference(source: str) -> Callable[..., Any]:
    """The ``solve`` defined by one of this module's reference sources (trusted code, compiled once)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<reference>", "exec"), namespace)
    return namespace["solve"]


def default_system_prompt(
    reasoning_start: str = REASONING_START,
    reasoning_end: str = REASONING_END,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
) -> str:
    """The short default instruction built from the tags.

    >>> default_system_prompt()
    'Write Python code. Reply as <think>plan</think><answer>def solve(...): ...</answer>.'
    """
    answer = f"{solution_start}def solve(...): ...{solution_end}"
    return f"Write Python code. Reply as {reasoning_start}plan{reasoning_end}{answer}."


class CodeTaskEnv(TaskEnv):
    """ "Write ``solve``" puzzles; each row carries ``question``, ``answer`` (reference source), ``tests``,
    ``task``, ``reasoning`` and ``difficulty``."""

    DIFFICULTIES = DIFFICULTIES

    def default_prompt(self) -> str:
        return default_system_prompt(self.reasoning_start, self.reasoning_end, self.solution_start, self.solution_end)

    def make_row(self, rng: random.Random) -> dict:
        """Draw one row (a task of this difficulty and 3-5 tests) from ``rng``."""
        task = rng.choice(_TASKS[self.difficulty])
        solve = _reference(task.source)
        tests, shown = [], []
        for _ in range(rng.randint(3, 5)):
            args = task.draw_args(rng)
            call, value = f"solve({', '.join(repr(a) for a in args)})", solve(*args)
            # stored as the sandbox reports it (tuples -> lists); shown to the model as Python writes it
            tests.append({"call": call, "expected": json.loads(json.dumps(value))})
            shown.append(f"{call} == {value!r}")
        question = f"{task.question} Example: {shown[0]}"
        return {
            "prompt": make_prompt(question, self.system_prompt),
            "question": question,
            "answer": task.source,
            "tests": tests,
            "task": task.name,
            "reasoning": task.plan,
            "difficulty": self.difficulty,
        }

    def solution_text(self, row: dict) -> str:
        """The ideal completion for ``row``: a short plan, then the reference source between the solution tags."""
        return (
            f"{self.reasoning_start}{row['reasoning']}{self.reasoning_end}"
            f"{self.solution_start}\n{row['answer']}{self.solution_end}"
        )
