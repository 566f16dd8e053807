"""Run checkpoints: what exact resume and actor recovery start from.

    checkpoints/step-000007/<group>.pt        written by each group actor (adapter, optimizer, RNG, hyper-parameters)
    checkpoints/step-000007/coordinator.json  written last by the coordinator
    checkpoints/LATEST                        "step-000007", replaced atomically once the step's files are all there

A checkpoint counts only once LATEST names it, so a run killed mid-checkpoint resumes from the
previous one. On resume every part file of a later step is removed (its step is redone), which is
what makes a resumed run's tables equal an uninterrupted run's: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.config.faults import fault_point
from engine.results.tables import TABLES, part_step, write_atomic_bytes


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def commit_checkpoint(run_dir: Path, step: int, coordinator_state: dict, keep: int) -> None:
    """Write the coordinator's state, then point LATEST at this step, then prune old checkpoints."""
    d = checkpoint_dir(run_dir, step)
    write_atomic_bytes(d / "coordinator.json", json.dumps(coordinator_state, indent=1).encode())
    fault_point("checkpoint", step)
    write_atomic_bytes(Path(run_dir) / "checkpoints" / "LATEST", d.name.encode())
    kept = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if p.is_dir())
    for old in kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path, dict] | None:
    """``(step, directory, coordinator state)`` of the last committed checkpoint, if any."""
    latest = Path(run_dir) / "checkpoints" / "LATEST"
    if not latest.is_file():
        return None
    d = latest.parent / latest.read_text().strip()
    state = json.loads((d / "coordinator.json").read_text())
    return int(state["step"]), d, state


def discard_after(run_dir: Path, step: int) -> list[Path]:
    """Remove part files and checkpoint directories of steps after ``step``, and stray temporaries."""
    removed = []
    for table in TABLES:
        for part in (Path(run_dir) / table).glob("part-*.parquet"):
            if part_step(part) > step:
                part.unlink()
                removed.append(part)
        for tmp in (Path(run_dir) / table).glob(".*.tmp"):
            tmp.unlink()
    for d in (Path(run_dir) / "checkpoints").glob("step-*"):
        if d.is_dir() and int(d.name.split("-")[1]) > step:
            shutil.rmtree(d)
            removed.append(d)
    return removed
