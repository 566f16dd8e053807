"""Scoring the population: each group's score, its gap to its cohort's best, and the leaderboard."""

from __future__ import annotations

import math
import os

import pandas as pd

from groups.rebalance import relative_gaps


def group_scores(
    steps: pd.DataFrame, evals: pd.DataFrame, groups: list[str], metric: str, window: int
) -> dict[str, float]:
    """``train_reward``: mean train reward of the last ``window`` steps; ``eval_reward`` / ``eval_accuracy``:
    the latest held-out evaluation. NaN where a group has no such rows yet."""
    scores = {}
    for g in groups:
        if metric == "train_reward":
            rows = steps[steps["group"] == g].sort_values("step") if len(steps) else steps
            scores[g] = float(rows["reward"].tail(window).mean()) if len(rows) else math.nan
        else:
            rows = evals[evals["group"] == g] if len(evals) else evals
            if not len(rows):
                scores[g] = math.nan
                continue
            latest = rows[rows["step"] == rows["step"].max()]
            scores[g] = float(latest["reward" if metric == "eval_reward" else "correct"].mean())
    return scores


def leaderboard(
    steps: pd.DataFrame,
    evals: pd.DataFrame,
    cohorts: dict[str, str],
    adapter_dirs: dict[str, str],
    failed: list[str],
    metric: str = "train_reward",
    window: int = 5,
) -> pd.DataFrame:
    """One row per group, ranked by score (failed groups last)."""
    groups = [g for g in cohorts if len(steps) and g in set(steps["group"])]
    scores = group_scores(steps, evals, groups, metric, window)
    gaps = relative_gaps(scores, {g: cohorts[g] for g in groups})
    rows = []
    for g in groups:
        s = steps[steps["group"] == g].sort_values("step")
        smooth = s["reward"].rolling(window, min_periods=1).mean()
        e = evals[evals["group"] == g] if len(evals) else evals
        last_eval = e[e["step"] == e["step"].max()] if len(e) else e
        rows.append(
            {
                "group": g,
                "cohort": cohorts[g],
                "status": "failed" if g in failed else "ok",
                "score": scores[g],
                "score_metric": metric,
                "relative_gap": gaps[g][0],
                "eval_reward": float(last_eval["reward"].mean()) if len(last_eval) else math.nan,
                "eval_accuracy": float(last_eval["correct"].mean()) if len(last_eval) else math.nan,
                "eval_format": float(last_eval["format_ok"].mean())
                if len(last_eval) and "format_ok" in last_eval
                else math.nan,
                "train_reward_first": float(s["reward"].head(window).mean()),
                "train_reward_last": float(s["reward"].tail(window).mean()),
                "best_step": int(s["step"].iloc[int(smooth.fillna(-math.inf).values.argmax())]),
                "steps": int(s["step"].max()),
                "adapter_path": os.path.abspath(adapter_dirs[g]) if g in adapter_dirs else None,
            }
        )
    board = pd.DataFrame(rows)
    board["_failed"] = board["status"] == "failed"
    board["_score"] = board["score"].fillna(-math.inf)
    board = board.sort_values(["_failed", "_score"], ascending=[True, False], kind="stable").drop(
        columns=["_failed", "_score"]
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)
