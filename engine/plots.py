"""``lorapop plot``: each group's reward and accuracy over steps, rebalancing events marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``<run_dir>/plot.png`` (or ``out``): reward and accuracy per group; rebalancing as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.results import read_table

    steps = read_table(run_dir, "steps")
    if steps.empty:
        raise FileNotFoundError(f"{run_dir}: no steps/ table to plot")
    events = read_table(run_dir, "events")
    rebalances = events[events["kind"] == "rebalance"] if len(events) else events
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax, column, label in zip(axes, ["reward", "accuracy"], ["train reward (mean)", "train accuracy"]):
        for group, g in steps.groupby("group", sort=False):
            g = g.sort_values("step")
            (line,) = ax.plot(g["step"], g[column].rolling(3, min_periods=1).mean(), label=group)
            hits = rebalances[rebalances["group"] == group] if len(rebalances) else rebalances
            for _, ev in hits.iterrows():
                y = g.loc[g["step"] == ev["step"], column]
                ax.scatter([ev["step"]], [y.iloc[0] if len(y) else 0.0], marker="v", s=80, color=line.get_color(),
                           edgecolors="black", zorder=3)
                ax.annotate(f"{ev['detail']}\u2190{ev['donor']}", (ev["step"], y.iloc[0] if len(y) else 0.0),
                            textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    axes[0].set_title(f"{Path(run_dir).name}: rolling mean over 3 steps; \u25bc = rebalanced")
    axes[1].set_xlabel("step")
    out = Path(out) if out else Path(run_dir) / "plot.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
