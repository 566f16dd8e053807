"""Terminal output: a live per-group progress view and the leaderboard table (rich)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


class LiveProgress:
    """One bar per group: step, reward and accuracy of the latest step."""

    def __init__(self, console: Console, cfg):
        self.progress = Progress(
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]:>6}  acc {task.fields[acc]:>5}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.total = cfg.steps
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, row: dict) -> None:
        group = row["group"]
        if group not in self.tasks:
            self.tasks[group] = self.progress.add_task(group, total=self.total, reward="-", acc="-")
        self.progress.update(
            self.tasks[group], completed=row["step"], reward=_fmt(row.get("reward")), acc=_fmt(row.get("accuracy"))
        )


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}"


def load_leaderboards(path: Path) -> pd.DataFrame:
    """A run's leaderboard, or, for a directory of runs, every run's groups ranked together (column ``run``)."""
    path = Path(path)
    if (path / "leaderboard.parquet").is_file():
        return pd.read_parquet(path / "leaderboard.parquet")
    boards = []
    for lb in sorted(path.glob("*/leaderboard.parquet")):
        b = pd.read_parquet(lb).drop(columns=["rank"])
        b.insert(0, "run", lb.parent.name)
        boards.append(b)
    if not boards:
        raise FileNotFoundError(
            f"{path}: no leaderboard.parquet here or in its subdirectories (is it a finished lorapop run?)"
        )
    board = pd.concat(boards, ignore_index=True)
    board = board.sort_values(["status", "score"], ascending=[False, False], kind="stable").reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def leaderboard_table(board: pd.DataFrame, title: str = "leaderboard") -> Table:
    table = Table(title=title)
    cols = [
        "rank",
        "run",
        "group",
        "cohort",
        "status",
        "score",
        "relative_gap",
        "eval_accuracy",
        "eval_format",
        "train_reward_first",
        "train_reward_last",
        "best_step",
    ]
    cols = [c for c in cols if c in board.columns]
    for c in cols:
        table.add_column(c, justify="right" if c not in ("group", "cohort") else "left")
    for _, r in board.iterrows():
        table.add_row(*[_fmt(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols])
    return table
