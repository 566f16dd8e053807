"""Parquet results of a run, in the layout of DESIGN.md.

    runs/<run>/config.yaml              resolved config
    runs/<run>/steps/part-*.parquet     one row per (step, group)
    runs/<run>/samples/part-*.parquet   one row per completion
    runs/<run>/evals/part-*.parquet     held-out greedy completions
    runs/<run>/events/part-*.parquet    failures, restarts, rebalancing
    runs/<run>/leaderboard.parquet      one row per group
    runs/<run>/adapters/<group>/        PEFT adapters

Every file is written to a hidden temporary name in the same directory and renamed into place, so
a killed run never leaves a half-written file where readers look (pyarrow skips names starting
with '.'). ``pandas.read_parquet("runs/x/steps")`` reads a table whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

from engine.faults import fault_point

TABLES = ("steps", "samples", "evals", "events")

# events mix kinds whose optional columns may all be empty in one part: a fixed schema keeps every
# part readable as one table
EVENT_SCHEMA = pa.schema([
    ("step", pa.int64()), ("group", pa.string()), ("kind", pa.string()), ("detail", pa.string()),
    ("donor", pa.string()), ("gap", pa.float64()), ("score", pa.float64()), ("donor_score", pa.float64()),
    ("old", pa.string()), ("new", pa.string()), ("value", pa.float64()),
])


def event_row(step: int, group: str, kind: str, detail: str = "", **extra) -> dict:
    """One ``events/`` row (restart, failed, rebalance, reward_failure, ...)."""
    row = {name: None for name in EVENT_SCHEMA.names}
    row.update(step=step, group=group, kind=kind, detail=detail, **extra)
    return row


def part_step(path: Path) -> int:
    """The step (index) of a ``part-<index>.parquet`` file."""
    return int(Path(path).stem.split("-", 1)[1])


def write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet(path: Path, rows: list[dict] | pd.DataFrame, schema: pa.Schema | None = None,
                  before_rename=None) -> Path:
    """Write rows whole to ``path`` via a hidden temporary file and an atomic rename."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False, schema=schema)
    if before_rename:
        before_rename()
    os.replace(tmp, path)
    return path


class RunWriter:
    """Appends part files to a run directory's tables."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def write_part(self, table: str, rows: list[dict], index: int) -> Path | None:
        """``<table>/part-<index>.parquet``; nothing is written for no rows."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if not rows:
            return None
        return write_parquet(self.run_dir / table / f"part-{index:06d}.parquet", rows,
                             schema=EVENT_SCHEMA if table == "events" else None,
                             before_rename=(lambda: fault_point("parquet", index)) if table == "samples" else None)

    def write_leaderboard(self, df: pd.DataFrame) -> Path:
        return write_parquet(self.run_dir / "leaderboard.parquet", df)


def read_table(run_dir: str | Path, table: str) -> pd.DataFrame:
    """A whole table of a run (empty frame if it has no parts)."""
    d = Path(run_dir) / table
    if not d.is_dir() or not any(d.glob("part-*.parquet")):
        return pd.DataFrame()
    return pd.read_parquet(d)
