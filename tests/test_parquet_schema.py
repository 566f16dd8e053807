"""#12, "Parquet that every reader opens": every part of a table has one schema for the whole run (a
group that failed mid-run, a resumed run), and every table exists, possibly empty, so duckdb, polars
and pandas read each table whole from its ``*.parquet`` glob."""

from __future__ import annotations

import signal
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from engine.results.tables import TABLES, RunWriter, conform, read_table, table_schema
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # end-to-end runs through a local Ray cluster (make test-fast leaves them out)

STEPS, PROMPTS, GROUP_SIZE, EVAL_PROMPTS = 4, 2, 4, 2

# group a has a reward function b lacks (my_reward): once a fails, later rows carry no reward/my_reward
CONFIG = """
seed: 4
steps: {steps}
base_model: {model}
eval_prompts: {eval_prompts}
grpo: {{prompts_per_step: {prompts}, group_size: {group_size}, max_completion_length: 24, lr: 0.003}}
population: {{max_restarts: 0, checkpoint_interval: 1, eval_interval: 2}}
groups:
  - name: a
    rewards: [{{name: format_exact}}, {{name: "tests.reward_fixtures:my_reward"}}]
  - name: b
"""


def parts(run_dir: Path, table: str) -> list[Path]:
    return sorted((run_dir / table).glob("part-*.parquet"))


def read_everywhere(run_dir: Path, table: str) -> dict[str, tuple[int, list[str]]]:
    """``(rows, columns)`` of a table as duckdb, polars and pandas read it from its parts."""
    glob = f"{run_dir}/{table}/*.parquet"
    rel = duckdb.sql(f"SELECT * FROM '{glob}'")
    frame = pl.read_parquet(glob)
    pandas = pd.read_parquet(run_dir / table)
    return {
        "duckdb": (len(rel.fetchall()), list(rel.columns)),
        "polars": (frame.height, frame.columns),
        "pandas": (len(pandas), list(pandas.columns)),
    }


@pytest.fixture(scope="module")
def failed_and_resumed(tmp_path_factory, tiny_model_path) -> Path:
    """Group a fails at step 2 (no restarts); the run is SIGKILLed while writing step 3's samples, then
    resumed from step 2's checkpoint: the steps after the failure are written twice, by two processes."""
    d = tmp_path_factory.mktemp("schema")
    (d / "c.yaml").write_text(
        CONFIG.format(
            steps=STEPS, model=tiny_model_path, eval_prompts=EVAL_PROMPTS, prompts=PROMPTS, group_size=GROUP_SIZE
        )
    )
    run_dir = d / "run"
    proc = run_cli(
        "run",
        str(d / "c.yaml"),
        "--run-dir",
        str(run_dir),
        "-q",
        timeout=600,
        env={"LORAPOP_FAULTS": "raise:a:2;kill:parquet:3"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "group a failed" in proc.stderr
    proc = run_cli("run", "--resume", str(run_dir), "-q", timeout=600)
    assert proc.returncode == 1 and "groups failed: a" in proc.stderr, proc.stderr[-3000:]
    return run_dir


def test_every_part_of_a_table_has_one_schema_after_a_failure_and_a_resume(failed_and_resumed):
    run_dir = failed_and_resumed
    for table in TABLES:
        found = parts(run_dir, table)
        assert found and found[0].name == "part-000000.parquet", table  # the table existed from the start
        schemas = [pq.read_schema(p) for p in found]
        assert all(s.equals(schemas[0], check_metadata=True) for s in schemas), table
    schema = pq.read_schema(parts(run_dir, "steps")[0])
    # every group's reward functions, once each, in config order; types fixed
    assert [n for n in schema.names if n.startswith("reward/")] == [
        "reward/format_exact",
        "reward/my_reward",
        "reward/answer_numeric",
    ]
    assert {str(schema.field(n).type) for n in ("step", "adapter_version", "reward_failures")} == {"int64"}
    assert {str(schema.field(n).type) for n in ("reward", "reward/my_reward", "loss", "time/step_s")} == {"double"}
    assert {str(schema.field(n).type) for n in ("group", "cohort")} == {"string"}
    assert schema == table_schema("steps", ["format_exact", "my_reward", "answer_numeric"])


def test_duckdb_polars_and_pandas_read_every_table(failed_and_resumed):
    run_dir = failed_and_resumed
    steps = read_table(run_dir, "steps")
    # step 1: both groups; a failed at step 2 (its step not learned), b went on
    assert sorted(zip(steps["step"], steps["group"])) == [(1, "a")] + [(s, "b") for s in range(1, STEPS + 1)]
    expected = {
        "steps": 1 + STEPS,
        "samples": (1 + STEPS) * PROMPTS * GROUP_SIZE,
        "evals": 2 * EVAL_PROMPTS,  # steps 2 and 4, group b only (greedy: one episode per prompt)
        "events": len(read_table(run_dir, "events")),
    }
    for table, rows in expected.items():
        columns = table_schema(table, ["format_exact", "my_reward", "answer_numeric"]).names
        for reader, got in read_everywhere(run_dir, table).items():
            assert got == (rows, columns), (table, reader)
    events = read_table(run_dir, "events")
    assert list(events.loc[events["kind"] == "failed", "group"]) == ["a"]
    # a's reward column: values in its step-1 row, null wherever b (or nobody) wrote it
    mine = duckdb.sql(
        f'SELECT "group", count("reward/my_reward") FROM \'{run_dir}/steps/*.parquet\' GROUP BY 1 ORDER BY 1'
    ).fetchall()
    assert mine == [("a", 1), ("b", 0)]
    samples = pl.read_parquet(f"{run_dir}/samples/*.parquet")
    assert samples.filter(pl.col("group") == "b")["reward/my_reward"].null_count() == STEPS * PROMPTS * GROUP_SIZE


def test_a_run_that_writes_no_samples_or_evals_still_has_those_tables(tmp_path, tiny_model_path):
    (tmp_path / "c.yaml").write_text(
        f"steps: 2\nbase_model: {tiny_model_path}\neval_prompts: 0\nsamples_per_step: 0\n"
        "grpo: {prompts_per_step: 2, group_size: 2, max_completion_length: 8}\n"
        "groups:\n  - {name: a}\n"
    )
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "-q", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for table in ("samples", "evals"):
        assert [p.name for p in parts(run_dir, table)] == ["part-000000.parquet"]
        columns = table_schema(table, ["format_exact", "answer_numeric"]).names
        for reader, got in read_everywhere(run_dir, table).items():
            assert got == (0, columns), (table, reader)
    assert read_everywhere(run_dir, "steps")["duckdb"][0] == 2


# --- the writer alone (no run) ---------------------------------------------------------------------


def test_tables_never_written_are_empty_with_their_columns(tmp_path):
    RunWriter(tmp_path, ["f"]).create_tables()
    for table in TABLES:
        columns = table_schema(table, ["f"]).names
        for reader, got in read_everywhere(tmp_path, table).items():
            assert got == (0, columns), (table, reader)
        assert list(read_table(tmp_path, table).columns) == columns


def test_a_resumed_writer_keeps_the_schema_of_the_parts_written(tmp_path):
    """The schema on disk wins over the one the plans give now (a run is one table whatever changed)."""
    first = RunWriter(tmp_path, ["f", "g"])
    first.create_tables()
    first.write_part("steps", [{"step": 1, "group": "a", "reward/f": 1.0, "reward/g": 0.5}], 1)
    again = RunWriter(tmp_path, ["f"])
    assert again.schemas["steps"] == table_schema("steps", ["f", "g"])
    again.write_part("steps", [{"step": 2, "group": "a", "reward/f": 2.0}], 2)
    schemas = [pq.read_schema(p) for p in parts(tmp_path, "steps")]
    assert len(schemas) == 3 and all(s.equals(schemas[0], check_metadata=True) for s in schemas)
    assert duckdb.sql(f"SELECT step, \"reward/g\" FROM '{tmp_path}/steps/*.parquet' ORDER BY step").fetchall() == [
        (1, 0.5),
        (2, None),
    ]


def test_rows_are_conformed_to_the_schema_or_refused():
    schema = table_schema("samples", ["f"])
    table = conform([{"step": 1, "group": "a", "correct": True, "reward/f": float("nan"), "turns": 2.0}], schema)
    assert table.schema == schema
    assert table.column("reward/f").null_count == 1 and table.column("prompt").null_count == 1  # NaN and absent: null
    assert table.column("correct").to_pylist() == [1.0] and table.column("turns").to_pylist() == [2]
    with pytest.raises(ValueError, match="not in the table's schema"):
        conform([{"step": 1, "reward/unknown": 1.0}], schema, "samples")
    with pytest.raises(ValueError, match="'turns' does not fit int64"):
        conform([{"step": 1, "turns": 1.5}], schema, "samples")  # never truncated to 1
