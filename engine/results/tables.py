"""Parquet results of a run, in this layout (the README's "Results" section lists the whole run directory).

    runs/<run>/config.yaml              resolved config
    runs/<run>/steps/part-*.parquet     one row per (step, group)
    runs/<run>/samples/part-*.parquet   one row per completion
    runs/<run>/evals/part-*.parquet     held-out greedy completions
    runs/<run>/events/part-*.parquet    failures, restarts, rebalancing
    runs/<run>/leaderboard.parquet      one row per group
    runs/<run>/adapters/<group>/        PEFT adapters

Every part of a table has the same schema for the whole run (resumes included): the columns declared
in ``COLUMNS`` below, with one ``reward/<fn>`` column per reward function of any group of the run,
types fixed (float64, int64, string); a row lacking a column (a failed group's rewards) has nulls
there, and NaN is written as null. Every table has a part from the start (``part-000000``, possibly
empty, carrying the schema), so ``duckdb``'s ``SELECT * FROM 'runs/x/steps/*.parquet'``,
``polars.read_parquet('runs/x/steps/*.parquet')`` and ``pandas.read_parquet("runs/x/steps")`` read
every table whole.

Every file is written to a hidden temporary name in the same directory and renamed into place, so
a killed run never leaves a half-written file where readers look (pyarrow skips names starting
with '.').
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.config.faults import fault_point

TABLES = ("steps", "samples", "evals", "events")

REWARDS = "reward/*"
"""Where a table's reward columns go in ``COLUMNS``: one float64 ``reward/<fn>`` per reward function of the run."""

_I, _F, _S = pa.int64(), pa.float64(), pa.string()

# The columns of each table. Rows are built by groups/actor.py (finish: steps and samples; evaluate:
# evals), the coordinator adding the population's phase timings (time/<phase>_s) to steps, and by
# event_row (events). A column a row carries must be declared here (writing it fails otherwise); one
# a row lacks is null.
COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "steps": [
        ("step", _I),
        ("group", _S),
        ("cohort", _S),
        ("adapter_version", _I),
        ("reward", _F),
        ("reward_std", _F),
        (REWARDS, _F),
        ("reward_failures", _I),
        ("reward_log", _S),
        ("accuracy", _F),
        ("advantage_abs", _F),
        ("loss", _F),
        ("kl", _F),
        ("clip_ratio", _F),
        ("logprob_mismatch", _F),
        ("is_weight_mean", _F),
        ("grad_norm", _F),
        ("lr", _F),
        ("temperature", _F),
        ("beta", _F),
        ("prompts_per_step", _I),
        ("completion_len_mean", _F),
        ("completion_len_max", _I),
        ("turns_mean", _F),
        ("truncated_frac", _F),
        ("time/rollout_s", _F),
        ("time/train_s", _F),
        ("time/publish_s", _F),
        ("time/begin_s", _F),
        ("time/generate_s", _F),
        ("time/observe_s", _F),
        ("time/prepare_s", _F),
        ("time/finish_s", _F),
        ("time/step_s", _F),
    ],
    "samples": [
        ("step", _I),
        ("group", _S),
        ("prompt_index", _I),
        ("sample_index", _I),
        ("prompt", _S),
        ("completion", _S),
        ("answer", _S),
        ("reward", _F),
        (REWARDS, _F),
        ("reward_log", _S),
        ("correct", _F),
        ("advantage", _F),
        ("finish_reason", _S),
        ("completion_tokens", _I),
        ("turns", _I),
        ("adapter_version", _I),
    ],
    "evals": [
        ("step", _I),
        ("group", _S),
        ("prompt_index", _I),
        ("sample_index", _I),
        ("prompt", _S),
        ("completion", _S),
        ("answer", _S),
        ("reward", _F),
        (REWARDS, _F),
        ("correct", _F),
        ("format_ok", _F),
        ("turns", _I),
        ("adapter_version", _I),
        ("prompt_ids", pa.list_(_I)),
        ("completion_ids", pa.list_(_I)),
        ("logprobs", pa.list_(_F)),
        ("completion_mask", pa.list_(_F)),
    ],
    # events mix kinds (restart, failed, rebalance, reward_failure, ...) with optional columns
    "events": [
        ("step", _I),
        ("group", _S),
        ("kind", _S),
        ("detail", _S),
        ("donor", _S),
        ("gap", _F),
        ("score", _F),
        ("donor_score", _F),
        ("old", _S),
        ("new", _S),
        ("value", _F),
    ],
}


def table_schema(table: str, reward_names: Sequence[str] = ()) -> pa.Schema:
    """The schema of ``table`` in a run whose reward functions are ``reward_names``.

    >>> table_schema("steps", ["format_exact", "answer_numeric"]).names[4:8]
    ['reward', 'reward_std', 'reward/format_exact', 'reward/answer_numeric']
    """
    if table not in COLUMNS:
        raise ValueError(f"unknown table {table!r}")
    fields = []
    for name, type_ in COLUMNS[table]:
        names = [f"reward/{fn}" for fn in reward_names] if name == REWARDS else [name]
        fields += [pa.field(n, type_) for n in names]
    return pa.schema(fields)


def reward_names(plans: Sequence) -> list[str]:
    """Every reward function name of every group (``GroupPlan``s), once each, in config order: the
    run's ``reward/<fn>`` columns (named as the group actors name them, by ``build_rewards``)."""
    from engine.config.builders import build_rewards

    names: list[str] = []
    for plan in plans:
        found = build_rewards(plan.rewards, plan.tags, plan.extra_sys_path)  # as the group actors build them
        names += [n for n, _, _ in found if n not in names]
    return names


EVENT_SCHEMA = table_schema("events")


def event_row(step: int, group: str, kind: str, detail: str = "", **extra) -> dict[str, Any]:
    """One ``events/`` row (restart, failed, rebalance, reward_failure, ...)."""
    row: dict[str, Any] = {name: None for name in EVENT_SCHEMA.names}
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


def write_parquet(path: Path, data: pa.Table | pd.DataFrame, before_rename: Callable[[], None] | None = None) -> Path:
    """Write a table (or a frame) whole to ``path`` via a hidden temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, pa.Table):
        pq.write_table(data, tmp)
    else:
        data.to_parquet(tmp, index=False)
    if before_rename:
        before_rename()
    os.replace(tmp, path)
    return path


def conform(rows: list[dict], schema: pa.Schema, table: str = "table") -> pa.Table:
    """``rows`` as a table of exactly ``schema``: a column no row has is all null, NaN becomes null, and
    values are cast safely (1.5 into an int64 column is an error, not 1). A column the schema lacks is
    an error: the schema is fixed for the whole run.

    >>> t = conform([{"step": 1, "kind": "x", "gap": float("nan")}], table_schema("events"), "events")
    >>> t.schema == table_schema("events"), t.column("gap").null_count, t.column("detail").null_count
    (True, 1, 1)
    """
    unknown = sorted({k for row in rows for k in row} - set(schema.names))
    if unknown:
        raise ValueError(
            f"{table}: columns {unknown} are not in the table's schema, fixed for the run; "
            f"a new column is declared in engine.results.tables.COLUMNS"
        )
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        try:
            arrays.append(pa.array(values, from_pandas=True).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{table}: column {field.name!r} does not fit {field.type}: {e}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def existing_schema(table_dir: Path) -> pa.Schema | None:
    """The schema of a table's parts already written (a resumed run keeps it), or None without parts."""
    parts = sorted(Path(table_dir).glob("part-*.parquet"))
    return pq.read_schema(parts[0]).remove_metadata() if parts else None


class RunWriter:
    """Appends part files to a run directory's tables, every part of a table with one schema."""

    def __init__(self, run_dir: str | Path, reward_names: Sequence[str] = ()):
        """``reward_names``: every reward function of the run (``reward_names(plans)``): the tables'
        ``reward/<fn>`` columns. A table that has parts already (a resumed run) keeps their schema."""
        self.run_dir = Path(run_dir)
        self.schemas = {t: existing_schema(self.run_dir / t) or table_schema(t, reward_names) for t in TABLES}

    def create_tables(self) -> list[Path]:
        """An empty ``part-000000`` (the schema, no rows) in each table that has no part yet, so that
        every reader opens every table, even one never written to. Returns the parts written."""
        return [
            write_parquet(self.run_dir / t / "part-000000.parquet", self.schemas[t].empty_table())
            for t in TABLES
            if not any((self.run_dir / t).glob("part-*.parquet"))
        ]

    def write_part(self, table: str, rows: list[dict], index: int) -> Path | None:
        """``<table>/part-<index>.parquet`` in the table's schema; nothing is written for no rows."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if not rows:
            return None
        data = conform(rows, self.schemas[table], table)
        return write_parquet(
            self.run_dir / table / f"part-{index:06d}.parquet",
            data,
            before_rename=(lambda: fault_point("parquet", index)) if table == "samples" else None,
        )

    def write_leaderboard(self, df: pd.DataFrame) -> Path:
        return write_parquet(self.run_dir / "leaderboard.parquet", df)


def read_table(run_dir: str | Path, table: str) -> pd.DataFrame:
    """A whole table of a run (empty frame if it has no parts)."""
    d = Path(run_dir) / table
    if not d.is_dir() or not any(d.glob("part-*.parquet")):
        return pd.DataFrame()
    return pd.read_parquet(d)
