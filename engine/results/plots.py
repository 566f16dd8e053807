"""``lorapop plot``: each group's train reward and accuracy over steps (a rolling mean), rebalancing and
failures marked on the curves, and held-out eval accuracy when the run has evaluations.

    fig = run_figure("runs/<run>")      # a matplotlib Figure (Agg canvas, no pyplot state)
    fig.savefig("plot.png", dpi=110)    # what ``lorapop plot`` does
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

WINDOW = 3  # steps in the plotted rolling mean
TRAIN_PANELS = [("reward", "train reward (mean)"), ("accuracy", "train accuracy")]
EVAL_LABEL = "eval accuracy"


def run_figure(run_dir: str | Path):
    """The figure of a run: a panel per train metric, one curve per group (rolling mean over ``WINDOW``
    steps), ▼ on the curve where a group was rebalanced and x at a failed group's last point (its label
    says "failed"); and, when the evals/ table has rows, a panel of eval accuracy per group (the mean of
    ``correct`` over each evaluation's episodes). Markers carry a ``gid`` (``rebalance:<group>``,
    ``failed:<group>``) so they can be found again. Raises FileNotFoundError when there are no steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from engine.results.tables import read_table

    steps = read_table(run_dir, "steps")
    if steps.empty:
        raise FileNotFoundError(f"{run_dir}: no steps/ table to plot")
    events = read_table(run_dir, "events")
    rebalances, failures = _events(events, "rebalance"), _events(events, "failed")
    evals = eval_accuracy(read_table(run_dir, "evals"))

    n_panels = len(TRAIN_PANELS) + (not evals.empty)
    fig = Figure(figsize=(10, 3.5 * n_panels))
    FigureCanvasAgg(fig)  # the Agg canvas, set on this figure only (no matplotlib.use, no pyplot)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    colors: dict[str, str] = {}
    for ax, (column, label) in zip(axes, TRAIN_PANELS):
        for group, g in steps.groupby("group", sort=False):
            curve = rolling_mean(g, column)
            failed_at = failures.loc[failures["group"] == group, "step"]
            name = group if failed_at.empty else f"{group} (failed at step {int(failed_at.min())})"
            (line,) = ax.plot(curve.index, curve.values, label=name, color=colors.get(group))
            colors[group] = line.get_color()
            for _, ev in rebalances[rebalances["group"] == group].iterrows():
                point = point_at(curve, ev["step"])
                if point is None:
                    continue
                ax.scatter(
                    *point,
                    marker="v",
                    s=80,
                    color=colors[group],
                    edgecolors="black",
                    zorder=3,
                    gid=f"rebalance:{group}",
                )
                ax.annotate(
                    f"{ev['detail']}\u2190{ev['donor'] or ''}",
                    point,
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                )
            point = None if failed_at.empty else point_at(curve, failed_at.min())
            if point is not None:
                ax.scatter(
                    *point, marker="x", s=90, linewidths=2.5, color=colors[group], zorder=4, gid=f"failed:{group}"
                )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if not evals.empty:
        ax = axes[-1]
        for group, e in evals.groupby("group", sort=False):
            (line,) = ax.plot(e["step"], e["accuracy"], marker="o", label=group, color=colors.get(group))
            colors.setdefault(group, line.get_color())
        ax.set_ylabel(EVAL_LABEL)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    axes[0].legend(fontsize=8, ncol=2)
    axes[0].set_title(f"{Path(run_dir).name}: rolling mean over {WINDOW} steps; \u25bc = rebalanced, x = failed")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig


def rolling_mean(steps: pd.DataFrame, column: str) -> pd.Series:
    """One group's ``column`` as plotted: the rolling mean over ``WINDOW`` steps, indexed by step."""
    return steps.sort_values("step").set_index("step")[column].astype(float).rolling(WINDOW, min_periods=1).mean()


def point_at(curve: pd.Series, step: int) -> tuple[int, float] | None:
    """The curve's point at ``step``, or its last point before it (a group that failed mid-step has no
    row for that step); None when the curve starts after ``step``."""
    before = curve.loc[:step]
    return None if before.empty else (int(before.index[-1]), float(before.iloc[-1]))


def eval_accuracy(evals: pd.DataFrame) -> pd.DataFrame:
    """Columns ``group, step, accuracy``: the mean of ``correct`` over each evaluation's episodes
    (episodes with no answer to check, ``correct`` NaN, left out); empty when there are none."""
    if evals.empty or "correct" not in evals:
        return pd.DataFrame(columns=["group", "step", "accuracy"])
    rows = evals.assign(accuracy=evals["correct"].astype(float)).dropna(subset=["accuracy"])
    return (
        rows.groupby(["group", "step"], sort=False, as_index=False)["accuracy"]
        .mean()
        .sort_values("step", kind="stable")
    )


def _events(events: pd.DataFrame, kind: str) -> pd.DataFrame:
    return (
        events[events["kind"] == kind]
        if len(events)
        else pd.DataFrame(columns=["step", "group", "kind", "detail", "donor"])
    )
