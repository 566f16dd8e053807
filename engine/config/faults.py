"""Fault injection for tests of resume and recovery: faults that cannot be caused at a precise point otherwise.

``LORAPOP_FAULTS`` holds ``;``-separated ``action:target:step`` entries (``step`` may be ``*``):

    kill:rollout:3        SIGKILL this process while step 3's rollouts are in flight
    kill:parquet:3        SIGKILL after a step-3 part file's bytes are written, before it is renamed into place
    kill:checkpoint:3     SIGKILL after step 3's group checkpoints are written, before LATEST points at them
    raise:<group>:*       the group's prepare() (rewards, advantages) raises at every step (a group that keeps failing)

Unset (the normal case), every call is a no-op.
"""

from __future__ import annotations

import os
import signal

ENV = "LORAPOP_FAULTS"


def _matches(action: str, target: str, step: int) -> bool:
    for entry in filter(None, os.environ.get(ENV, "").split(";")):
        a, t, s = entry.split(":")
        if a == action and t == target and (s == "*" or int(s) == step):
            return True
    return False


def fault_point(point: str, step: int) -> None:
    """Kill this process here if ``kill:<point>:<step>`` is configured."""
    if _matches("kill", point, step):
        os.kill(os.getpid(), signal.SIGKILL)


def group_fault(group: str, step: int) -> None:
    """Raise inside a group's step if ``raise:<group>:<step>`` is configured."""
    if _matches("raise", group, step):
        raise RuntimeError(f"injected fault in group {group} at step {step} ({ENV})")
