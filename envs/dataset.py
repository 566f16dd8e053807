"""Rows from user files: JSONL, JSON, CSV, Parquet or a Hugging Face ``save_to_disk`` directory.

Data order is a pure function of ``(seed, step, n)``: sample ``k`` of ``batch(step, n)`` has global
index ``i = step * n + k``; it is position ``i % N`` of epoch ``i // N``, whose order is the
permutation drawn from ``numpy.random.default_rng([seed, EPOCH_TAG, epoch])``. So every training
row is seen exactly once per epoch and a resumed run sees the same rows.

The eval split is fixed once by ``default_rng([seed, SPLIT_TAG])``: the last ``eval_size`` (or
``round(eval_fraction * N)``) rows of that shuffle are held out.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np

from envs.base import Env, make_prompt

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SPLIT_TAG = int.from_bytes(b"split", "big")  # namespaces the split stream from the epoch streams
EPOCH_TAG = int.from_bytes(b"epoch", "big")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or lacks a required column."""


def _load_located(path: Path) -> list[tuple[str, dict]]:
    """Records of ``path`` each with its location for error messages (``file:line`` or ``file row k``)."""
    try:
        return _read_located(path)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def _read_located(path: Path) -> list[tuple[str, dict]]:
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_dir():
        return [(f"{path} row {i}", r) for i, r in enumerate(_load_hf_dir(path), 1)]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{line_no}: invalid JSON: {e}") from e
                out.append((f"{path}:{line_no}", record))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: invalid JSON: {e}") from e
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        out = [(f"{path} row {i}", r) for i, r in enumerate(data, 1)]
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            out = []
            try:
                for r in reader:
                    # line_num is the physical line the record ended on; the header is line 1.
                    if None in r:  # more fields than the header names (csv keeps them under the key None)
                        raise DatasetError(
                            f"{path}:{reader.line_num}: {len(r) - 1 + len(r[None])} fields, the header "
                            f"names {len(reader.fieldnames or [])} ({', '.join(reader.fieldnames or [])}); "
                            f"quote values that hold a comma"
                        )
                    out.append((f"{path}:{reader.line_num}", dict(r)))
            except csv.Error as e:
                raise DatasetError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        out = [(f"{path} row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1)]
    else:
        raise DatasetError(
            f"unsupported dataset file {path}: expected one of {', '.join(SUFFIXES)} "
            "or a directory saved by datasets.save_to_disk"
        )
    for where, record in out:
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return out


def _load_hf_dir(path: Path) -> list[dict]:
    """Records of a directory written by ``datasets.Dataset.save_to_disk`` (the "train" split of a DatasetDict)."""
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise DatasetError(
            f"{path} is a directory but not a Hugging Face save_to_disk dataset (none of {', '.join(markers)} found)"
        )
    try:
        import datasets
    except ImportError as e:
        raise DatasetError(f"{path} is a Hugging Face dataset directory; `pip install datasets` to load it") from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DatasetError(f"{path}: DatasetDict has no 'train' split (splits: {sorted(ds)})")
        ds = ds["train"]
    return ds.to_list()


def load_records(path: str | Path) -> list[dict]:
    """Load the records of a dataset file or directory as a list of dicts.

    Accepts ``.jsonl`` (one object per line, blank lines skipped), ``.json`` (a list of objects),
    ``.csv`` (values kept as strings), ``.parquet`` and ``datasets.save_to_disk`` directories.
    Raises ``DatasetError`` for a missing path, an unknown suffix or a malformed record.
    """
    return [record for _, record in _load_located(Path(path))]


def _is_missing(value: object) -> bool:
    """None, NaN or an empty string: nothing to prompt with or verify against."""
    return value is None or (isinstance(value, float) and value != value) or value == ""


class DatasetEnv(Env):
    """Rows from a user dataset, with deterministic epochs and an optional held-out eval split."""

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        prompt_column: str | None = None,
        answer_column: str = "answer",
        system_prompt: str | None = None,
        template: str | None = None,
        eval_fraction: float = 0.0,
        eval_size: int | None = None,
        eval_seed: int | None = None,
    ) -> None:
        """Load and validate every row now so that errors surface before training starts.

        ``prompt_column=None`` picks ``prompt`` if present, else ``question``. ``template`` is a
        ``str.format`` string over the row's columns applied to string prompts. ``eval_size``, when
        given, overrides ``eval_fraction``. The split is drawn from ``eval_seed`` (a cohort's replicas
        share it, so no replica trains on another's held-out rows), else from ``seed``.
        """
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.path, self.seed, self.eval_seed = Path(path), seed, eval_seed
        located = _load_located(self.path)
        if not located:
            raise DatasetError(f"dataset {self.path} is empty")
        if prompt_column is None:
            columns = sorted({c for _, r in located for c in r})
            prompt_column = next((c for c in ("prompt", "question") if c in columns), None)
            if prompt_column is None:
                raise DatasetError(
                    f"{self.path}: no 'prompt' or 'question' column (columns found: {columns}); set prompt_column"
                )
        self.prompt_column, self.answer_column = prompt_column, answer_column
        self.system_prompt, self.template = system_prompt, template
        rows = [self._normalize(where, record) for where, record in located]

        n_eval = eval_size if eval_size is not None else round(eval_fraction * len(rows))
        if not 0 <= n_eval < len(rows):
            raise DatasetError(
                f"{self.path}: eval split of {n_eval} rows leaves no training rows (dataset has {len(rows)})"
            )
        order = np.random.default_rng([self.held_out_seed(), SPLIT_TAG]).permutation(len(rows))
        cut = len(rows) - n_eval
        self._train = [rows[i] for i in sorted(order[:cut])]  # file order; epochs shuffle
        self._eval = [rows[i] for i in sorted(order[cut:])]
        self._perms: dict[int, np.ndarray] = {}  # cache of a pure function of (seed, epoch)

    def _normalize(self, where: str, record: dict) -> dict:
        """Check the required columns and add the normalized ``prompt`` and ``answer``."""
        for column in (self.prompt_column, self.answer_column):
            if _is_missing(record.get(column)):
                state = "missing" if column not in record else "empty"
                raise DatasetError(f"{where}: column {column!r} is {state} (columns: {sorted(record)})")
        question = record[self.prompt_column]
        prompt: list[dict] | str
        if isinstance(question, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in question):
                raise DatasetError(f"{where}: a list prompt must hold {{'role', 'content'}} messages")
            prompt = [dict(m) for m in question]
            if self.system_prompt and not any(m["role"] == "system" for m in prompt):
                prompt.insert(0, {"role": "system", "content": self.system_prompt})
        else:
            try:
                prompt = make_prompt(str(question), self.system_prompt, self.template, columns=record)
            except (KeyError, ValueError) as e:
                raise DatasetError(f"{where}: {e}") from e
        return {**record, "prompt": prompt, "answer": str(record[self.answer_column])}

    def drop_prompts(self, keep) -> int:
        """Drop training and eval rows for which ``keep(row)`` is False; returns how many were dropped.

        Used for prompts longer than ``max_prompt_length`` tokens: a truncated prompt would be scored
        against the wrong question, so such rows are dropped (and counted by the caller), never cut.
        """
        before = len(self._train) + len(self._eval)
        self._train = [r for r in self._train if keep(r)]
        self._eval = [r for r in self._eval if keep(r)]
        self._perms.clear()
        if not self._train:
            raise DatasetError(f"{self.path}: every training row was dropped (prompts longer than max_prompt_length?)")
        return before - len(self._train) - len(self._eval)

    def __len__(self) -> int:
        """Number of training rows."""
        return len(self._train)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The training-row order of ``epoch``: a permutation from ``default_rng([seed, EPOCH_TAG, epoch])``."""
        if epoch not in self._perms:
            if len(self._perms) >= 4:  # batches touch at most a couple of epochs at a time
                self._perms.clear()
            rng = np.random.default_rng([self.seed, EPOCH_TAG, epoch])
            self._perms[epoch] = rng.permutation(len(self._train))
        return self._perms[epoch]

    def batch(self, step: int, n: int) -> list[dict]:
        """Rows ``step * n`` .. ``step * n + n - 1`` of the endless sequence of shuffled epochs."""
        if step < 0 or n < 0:
            raise ValueError(f"step and n must be >= 0, got step={step}, n={n}")
        return self.rows_from(step * n, n, step)

    def rows_from(self, start: int, n: int, step: int = 0) -> list[dict]:
        """Rows ``start`` .. ``start + n - 1`` of the endless sequence of shuffled epochs."""
        if start < 0 or n < 0:
            raise ValueError(f"start and n must be >= 0, got start={start}, n={n}")
        size = len(self._train)
        out = []
        for i in range(start, start + n):
            epoch, pos = divmod(i, size)
            out.append(copy.deepcopy(self._train[self._epoch_order(epoch)[pos]]))
        return out

    def eval_rows(self, n: int) -> list[dict]:
        """The first ``n`` held-out rows, or the first ``n`` training rows when there is no eval split."""
        source = self._eval if self._eval else self._train
        return copy.deepcopy(source[:n])
