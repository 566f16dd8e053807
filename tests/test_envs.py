"""Behaviour tests for envs/: arithmetic task correctness and determinism, dataset loading and order."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from envs.arithmetic import DEFAULT_SYSTEM_PROMPT, ArithmeticEnv
from envs.base import make_prompt
from envs.dataset import DatasetEnv, DatasetError, load_records


def test_make_prompt_conversational_and_string():
    assert make_prompt("Hi?", "Sys") == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Hi?"},
    ]
    assert make_prompt("Hi?", None) == [{"role": "user", "content": "Hi?"}]
    assert make_prompt("2+2", None, "Q: {question} [{topic}]", {"topic": "math"}, conversational=False) == (
        "Q: 2+2 [math]"
    )


def test_make_prompt_missing_template_column_is_named():
    with pytest.raises(KeyError, match="topic"):
        make_prompt("x", None, "{question} {topic}", {"other": 1})


# ---------------------------------------------------------------- arithmetic

RANGES = {1: (9, "+"), 2: (20, "+-"), 3: (12, "+-*"), 4: (30, "+-")}


def _rows(env: ArithmeticEnv, steps: int = 50, n: int = 8) -> list[dict]:
    return [r for s in range(steps) for r in env.batch(s, n)]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_arithmetic_answers_and_ranges(difficulty):
    env = ArithmeticEnv(seed=3, difficulty=difficulty)
    hi, allowed = RANGES[difficulty]
    ops_seen = set()
    for row in _rows(env):
        lhs, rhs = row["reasoning"].split("=")
        assert " " not in row["reasoning"]
        assert eval(lhs) == int(rhs) == int(row["answer"])  # independent check of the answer
        assert int(row["answer"]) >= 0
        nums = [int(x) for x in re.split(r"[-+*]", lhs)]
        ops = re.findall(r"[-+*]", lhs)
        assert len(ops) == (2 if difficulty == 4 else 1)
        assert all(1 <= x <= hi for x in nums), row
        assert set(ops) <= set(allowed)
        ops_seen.update(ops)
        # the question mentions the operands in order
        assert [int(x) for x in re.findall(r"\d+", row["question"])] == nums
        assert len(row["question"]) <= 80
        assert row["difficulty"] == difficulty
        assert row["prompt"] == [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": row["question"]},
        ]
    assert ops_seen == set(allowed)


def test_arithmetic_partial_results_non_negative_at_level_4():
    for row in _rows(ArithmeticEnv(seed=1, difficulty=4)):
        a, op, b = re.match(r"(\d+)([-+])(\d+)", row["reasoning"]).groups()
        assert eval(f"{a}{op}{b}") >= 0


def test_arithmetic_determinism():
    env = ArithmeticEnv(seed=7, difficulty=3)
    assert env.batch(5, 16) == ArithmeticEnv(seed=7, difficulty=3).batch(5, 16)
    env.batch(0, 100)  # no hidden state advances between calls
    assert env.batch(5, 16) == ArithmeticEnv(seed=7, difficulty=3).batch(5, 16)
    assert env.batch(5, 16) != env.batch(6, 16)
    assert env.batch(5, 16) != ArithmeticEnv(seed=8, difficulty=3).batch(5, 16)
    assert env.eval_rows(10) == ArithmeticEnv(seed=7, difficulty=3).eval_rows(10)


def test_arithmetic_eval_differs_from_training():
    env = ArithmeticEnv(seed=0, difficulty=4)
    train_q = [r["question"] for r in env.batch(0, 20)]
    eval_q = [r["question"] for r in env.eval_rows(20)]
    assert train_q != eval_q
    assert env.eval_rows(5) == env.eval_rows(20)[:5]


def test_arithmetic_solution_text_and_tags():
    env = ArithmeticEnv(
        difficulty=1, reasoning_start="<r>", reasoning_end="</r>", solution_start="<s>", solution_end="</s>"
    )
    row = env.batch(0, 1)[0]
    assert env.solution_text(row) == f"<r>{row['reasoning']}</r><s>{row['answer']}</s>"
    assert "<r>" in env.system_prompt and "</s>" in env.system_prompt
    assert ArithmeticEnv().solution_text({"reasoning": "3+5=8", "answer": "8"}) == (
        "<think>3+5=8</think><answer>8</answer>"
    )
    custom = ArithmeticEnv(system_prompt="Be exact.").batch(0, 1)[0]
    assert custom["prompt"][0] == {"role": "system", "content": "Be exact."}


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_arithmetic_bad_difficulty(bad):
    with pytest.raises(ValueError, match="difficulty"):
        ArithmeticEnv(difficulty=bad)


# ---------------------------------------------------------------- dataset loading

RECORDS = [{"question": f"q{i}", "answer": i, "topic": f"t{i % 3}"} for i in range(10)]


def _write(tmp_path: Path, fmt: str, records: list[dict] = RECORDS) -> Path:
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "csv":
        import pandas as pd

        pd.DataFrame(records).to_csv(path, index=False)
    elif fmt == "parquet":
        import pandas as pd

        pd.DataFrame(records).to_parquet(path)
    elif fmt == "hf":
        datasets = pytest.importorskip("datasets")
        path = tmp_path / "hf_ds"
        columns = {k: [r[k] for r in records] for k in records[0]}
        datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "hf"])
def test_each_format_loads(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    records = load_records(path)
    assert [str(r["answer"]) for r in records] == [str(i) for i in range(10)]
    if fmt == "csv":
        assert records[0]["answer"] == "0"  # CSV values stay strings
    env = DatasetEnv(path, system_prompt="Sys", template="Q: {question} ({topic})")
    assert len(env) == 10
    rows = env.batch(0, 10)
    by_q = {r["question"]: r for r in rows}
    assert by_q["q4"]["answer"] == "4"
    assert by_q["q4"]["topic"] == "t1"  # extra columns preserved for rewards
    assert by_q["q4"]["prompt"] == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Q: q4 (t1)"},
    ]


def test_prompt_column_preferred_over_question(tmp_path):
    path = _write(tmp_path, "jsonl", [{"prompt": "P", "question": "Q", "answer": 1}])
    assert DatasetEnv(path).batch(0, 1)[0]["prompt"] == [{"role": "user", "content": "P"}]
    assert DatasetEnv(path, prompt_column="question").batch(0, 1)[0]["prompt"][-1]["content"] == "Q"


def test_no_prompt_column_names_columns(tmp_path):
    path = _write(tmp_path, "jsonl", [{"text": "x", "answer": 1}])
    with pytest.raises(DatasetError, match=r"data\.jsonl.*'answer', 'text'"):
        DatasetEnv(path)


def test_conversational_prompt_passes_through(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    with_sys = [{"role": "system", "content": "own"}, {"role": "user", "content": "hi"}]
    path = _write(tmp_path, "jsonl", [{"prompt": msgs, "answer": "a"}, {"prompt": with_sys, "answer": "b"}])
    rows = {r["answer"]: r for r in DatasetEnv(path, system_prompt="Sys").batch(0, 2)}
    assert rows["a"]["prompt"] == [{"role": "system", "content": "Sys"}] + msgs
    assert rows["b"]["prompt"] == with_sys


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_text('{"question": "a", "answer": 1}\n\n{"question": "b", oops}\n')
    with pytest.raises(DatasetError, match=r"file\.jsonl:3"):
        load_records(path)


def test_missing_answer_names_column_and_line(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_text('{"question": "a", "answer": 1}\n{"question": "b"}\n')
    with pytest.raises(DatasetError, match=r"file\.jsonl:2.*'answer'"):
        DatasetEnv(path)
    csv_path = tmp_path / "file.csv"
    csv_path.write_text("question,answer\na,1\nb,\n")
    with pytest.raises(DatasetError, match=r"file\.csv:3.*'answer'"):
        DatasetEnv(csv_path)
    null_path = tmp_path / "nulls.json"
    null_path.write_text('[{"question": "a", "answer": 1}, {"question": null, "answer": 2}]')
    with pytest.raises(DatasetError, match=r"nulls\.json row 2.*'question'"):
        DatasetEnv(null_path)


def test_missing_file_and_bad_suffix(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        load_records(missing)
    odd = tmp_path / "data.txt"
    odd.write_text("x")
    with pytest.raises(DatasetError, match=r"data\.txt.*\.jsonl"):
        load_records(odd)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        DatasetEnv(empty)


# ---------------------------------------------------------------- dataset order and split


def test_batch_determinism_and_epochs(tmp_path):
    path = _write(tmp_path, "jsonl")
    env = DatasetEnv(path, seed=5)
    assert env.batch(3, 4) == DatasetEnv(path, seed=5).batch(3, 4)
    env.batch(0, 7)
    assert env.batch(3, 4) == DatasetEnv(path, seed=5).batch(3, 4)
    # 5 steps of 4 = 2 epochs of 10: each epoch covers every row exactly once
    seq = [r["question"] for s in range(5) for r in env.batch(s, 4)]
    assert Counter(seq[:10]) == Counter(f"q{i}" for i in range(10))
    assert Counter(seq[10:]) == Counter(f"q{i}" for i in range(10))
    assert seq[:10] != seq[10:]  # epochs are shuffled independently
    # the same global indices give the same rows whatever the batch size
    assert [r["question"] for r in env.batch(1, 10)] == seq[10:]
    assert [r["question"] for r in DatasetEnv(path, seed=6).batch(0, 10)] != seq[:10]
    # mutating a returned row does not leak into later batches
    env.batch(0, 1)[0]["prompt"].append("junk")
    assert env.batch(0, 1)[0]["prompt"][-1]["role"] == "user"


def test_eval_split_disjoint_from_train(tmp_path):
    path = _write(tmp_path, "jsonl", [{"question": f"q{i}", "answer": i} for i in range(20)])
    env = DatasetEnv(path, seed=1, eval_fraction=0.25)
    assert len(env) == 15
    eval_q = {r["question"] for r in env.eval_rows(100)}
    train_q = {r["question"] for s in range(10) for r in env.batch(s, 7)}
    assert len(eval_q) == 5 and len(train_q) == 15
    assert not eval_q & train_q
    assert env.eval_rows(2) == env.eval_rows(5)[:2]
    assert {r["question"] for r in DatasetEnv(path, seed=1, eval_size=5).eval_rows(5)} == eval_q
    no_split = DatasetEnv(path)
    assert len(no_split) == 20 and len(no_split.eval_rows(3)) == 3
    with pytest.raises(DatasetError, match="no training rows"):
        DatasetEnv(path, eval_size=20)
