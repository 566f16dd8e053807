"""``code_exec``: reward a completion by running its code against the row's tests in the sandbox.

The dataset column ``tests`` holds, per row, a list of ``{"call": "solve(...)", "expected": <JSON value>}``
(or that list as a JSON string, as it comes out of Parquet). Each completion's code runs in ONE
sandboxed process (``rewards.sandbox.run_sandboxed``) that evaluates every call; the reward is the
fraction of calls whose value equals ``expected`` after a JSON round trip (so tuples match lists).
Runs that end without values get a fixed reward per status (see ``DEFAULT_FAILURE_REWARDS``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.sandbox import SandboxResult, run_sandboxed
from rewards.text import SOLUTION_END, SOLUTION_START, completion_text, extract_answer

RewardFn = Callable[..., list[float | None]]

DEFAULT_FAILURE_REWARDS: dict[str, float] = {
    "timeout": -1.0,
    "memory": -1.0,
    "forbidden": -1.0,
    "crash": -1.0,
    "error": 0.0,
    "no_code": 0.0,
}
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_WORKERS = 2  # each run is its own process; the sandbox is meant to stay light on the host


def extract_code(text: str, solution_start: str = SOLUTION_START, solution_end: str = SOLUTION_END) -> str | None:
    """The code in the last solution tags (unwrapping a fence inside them), else in the last fenced block.

    >>> extract_code("<answer>def f(): pass</answer>")
    'def f(): pass'
    >>> extract_code("Here:\\n```python\\nx = 1\\n```")
    'x = 1'
    >>> extract_code("no code") is None
    True
    """
    tagged = extract_answer(text, solution_start, solution_end)
    if tagged:
        fenced = _FENCE.findall(tagged)
        return fenced[-1].strip() if fenced else tagged
    fenced = _FENCE.findall(text)
    return fenced[-1].strip() or None if fenced else None


def _normalized(value: Any) -> Any:
    """``value`` as it looks after a JSON round trip (tuples -> lists); non-JSON values as their repr."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def _tests(name: str, kwargs: dict[str, Any], n: int) -> list[Any]:
    if "tests" not in kwargs:
        raise KeyError(f"reward '{name}' needs a column 'tests' (a list of {{'call', 'expected'}} per row)")
    tests = list(kwargs["tests"])
    if len(tests) != n:
        raise ValueError(f"reward '{name}': {len(tests)} rows of 'tests' for {n} completions")
    return [json.loads(t) if isinstance(t, str) else t for t in tests]


def code_exec(
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
    rewards: dict[str, float] | None = None,
    weaker_sandbox: bool = False,
) -> RewardFn:
    """Fraction of the row's ``tests`` the completion's code passes; fixed rewards for failed runs.

    ``rewards`` overrides entries of ``DEFAULT_FAILURE_REWARDS`` (keys: timeout, memory, forbidden,
    crash, error, no_code). A row with no tests gives None (the sample is skipped). The code runs in
    the kernel sandbox (``rewards.kernel_sandbox``); on a host without it the reward cannot be built
    (a configuration error naming what is missing) unless ``weaker_sandbox`` accepts the Python
    guards alone.
    """
    from rewards.sandbox import kernel_plan

    kernel_plan(weaker_sandbox)  # refuse now, before any run, where the host lacks the sandbox
    failure = {**DEFAULT_FAILURE_REWARDS, **(rewards or {})}
    unknown = set(failure) - set(DEFAULT_FAILURE_REWARDS)
    if unknown:
        raise ValueError(f"code_exec: unknown reward keys {sorted(unknown)}; known: {sorted(DEFAULT_FAILURE_REWARDS)}")

    def score(completion: Any, tests: list[dict]) -> float | None:
        if not tests:
            return None
        code = extract_code(completion_text(completion), solution_start, solution_end)
        if code is None:
            return failure["no_code"]
        result: SandboxResult = run_sandboxed(
            code,
            [str(t["call"]) for t in tests],
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            cpu_s=max(1, int(timeout_s + 0.999)),
            weaker_ok=weaker_sandbox,
        )
        if result.status != "ok":
            return failure[result.status]
        passed = sum(
            1
            for test, outcome in zip(tests, result.value or [])
            if isinstance(outcome, dict) and outcome.get("ok") and outcome.get("value") == _normalized(test["expected"])
        )
        return passed / len(tests)

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        tests = _tests("code_exec", kwargs, len(completions))
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            return list(pool.map(score, completions, tests))

    reward.__name__ = reward.__qualname__ = "code_exec"
    return reward
