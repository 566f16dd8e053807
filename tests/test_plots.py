"""``lorapop plot`` on a hand-made run directory (no Ray): markers sit on the plotted rolling mean, a
failed group is marked and labelled, held-out eval accuracy gets its own panel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.results.plots import EVAL_LABEL, WINDOW, run_figure

REWARDS = {"a": [0.0, 0.9, 0.1, 0.8, 0.2, 0.7], "b": [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]}
FAILED_AT = 5  # group b fails during step 5: it has no steps rows from there


def _write(run_dir: Path, table: str, rows: list[dict]) -> None:
    """One ``<table>/part-*.parquet`` file, the layout engine/results/tables.py reads."""
    (run_dir / table).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(run_dir / table / "part-000000.parquet", index=False)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    steps = [
        {"step": s, "group": g, "reward": r, "accuracy": r / 2}
        for g, rewards in REWARDS.items()
        for s, r in enumerate(rewards, start=1)
        if g != "b" or s < FAILED_AT
    ]
    _write(run, "steps", steps)
    _write(
        run,
        "events",
        [
            {"step": 4, "group": "a", "kind": "rebalance", "detail": "exploit", "donor": "b"},
            {"step": 2, "group": "b", "kind": "restart", "detail": "restart 1 from checkpoint 1", "donor": None},
            {"step": FAILED_AT, "group": "b", "kind": "failed", "detail": "gave up after 2 restarts", "donor": None},
        ],
    )
    return run


def _expected_mean(group: str, step: int, scale: float = 1.0) -> float:
    values = REWARDS[group][max(0, step - WINDOW) : step]  # steps start at 1
    return scale * sum(values) / len(values)


def _markers(ax, gid: str) -> np.ndarray:
    return np.concatenate([c.get_offsets() for c in ax.collections if c.get_gid() == gid])


def _panel(fig, ylabel: str):
    (ax,) = [ax for ax in fig.axes if ax.get_ylabel() == ylabel]
    return ax


def test_rebalance_marker_sits_on_the_rolling_mean(run_dir):
    fig = run_figure(run_dir)
    for ylabel, scale in [("train reward (mean)", 1.0), ("train accuracy", 0.5)]:
        ax = _panel(fig, ylabel)
        ((x, y),) = _markers(ax, "rebalance:a")
        assert x == 4 and y == pytest.approx(_expected_mean("a", 4, scale))
        assert y != pytest.approx(scale * REWARDS["a"][3])  # not the raw step value
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "a"]
        assert y == pytest.approx(line.get_ydata()[list(line.get_xdata()).index(4)])  # on the curve as drawn
    assert not [
        c for ax in fig.axes for c in ax.collections if c.get_gid() == "rebalance:b"
    ]  # a restart is no rebalance


def test_failed_group_is_marked_at_its_last_point_and_labelled(run_dir):
    fig = run_figure(run_dir)
    ax = _panel(fig, "train reward (mean)")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a", f"b (failed at step {FAILED_AT})"]
    ((x, y),) = _markers(ax, "failed:b")
    assert x == FAILED_AT - 1 and y == pytest.approx(_expected_mean("b", FAILED_AT - 1))
    assert not [c for c in ax.collections if c.get_gid() == "failed:a"]
    ((x, y),) = _markers(_panel(fig, "train accuracy"), "failed:b")
    assert x == FAILED_AT - 1 and y == pytest.approx(_expected_mean("b", FAILED_AT - 1, 0.5))


def test_eval_accuracy_panel_only_when_the_run_has_evaluations(run_dir):
    assert [ax.get_ylabel() for ax in run_figure(run_dir).axes] == ["train reward (mean)", "train accuracy"]
    # two held-out episodes per evaluation; one at step 4 of group a has no answer to check (NaN)
    correct = {("a", 2): [0.0, 1.0], ("a", 4): [1.0, math.nan], ("b", 2): [0.0, 0.0], ("b", 4): [1.0, 1.0]}
    _write(
        run_dir,
        "evals",
        [
            {"step": s, "group": g, "prompt_index": i, "correct": c, "reward": c}
            for (g, s), cs in correct.items()
            for i, c in enumerate(cs)
        ],
    )
    fig = run_figure(run_dir)
    assert [ax.get_ylabel() for ax in fig.axes] == ["train reward (mean)", "train accuracy", EVAL_LABEL]
    ax = _panel(fig, EVAL_LABEL)
    points = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}
    assert points == {"a": ([2, 4], [0.5, 1.0]), "b": ([2, 4], [0.0, 1.0])}
    train_colors = {ln.get_label()[:1]: ln.get_color() for ln in fig.axes[0].get_lines()}
    assert {ln.get_label(): ln.get_color() for ln in ax.get_lines()} == train_colors  # a group keeps its colour


def test_plot_command_writes_the_png_and_fails_cleanly_without_steps(run_dir, tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("plot", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot.png" in proc.stdout
    proc = run_cli("plot", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no steps/ table" in proc.stderr and "Traceback" not in proc.stderr
