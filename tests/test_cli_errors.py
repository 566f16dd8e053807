"""Bad input through the CLI: a non-zero exit, a message naming the field/file/line, and nothing written.

All of these fail in validation or preflight, before Ray starts, so they run in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app

GOOD = """
steps: 2
groups:
  - name: a
"""


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_run(tmp_path):
    """A finished run directory that no failed command may touch."""
    d = tmp_path / "runs" / "old"
    (d / "steps").mkdir(parents=True)
    (d / "steps" / "part-000001.parquet").write_bytes(b"old parquet bytes")
    (d / "config.yaml").write_text("old: config\n")
    return d


def check_fails(result, *needles: str):
    assert result.exit_code == 2, result.output
    for n in needles:
        assert n in result.output, f"{n!r} not in:\n{result.output}"


@pytest.mark.parametrize(
    "extra, needles",
    [
        ("bogus_key: 1\n", ["bogus_key", "unknown key"]),
        ("eval_prompts: lots\n", ["eval_prompts", "integer"]),
        ("grpo: {group_size: 1}\n", ["groups.0.grpo.group_size", "greater than or equal to 2"]),
    ],
)
def test_bad_config_fields(tmp_path, existing_run, extra, needles):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(GOOD + extra)
    before = snapshot(existing_run)
    check_fails(invoke("run", str(cfg), "--run-dir", str(existing_run), "-q"), "bad.yaml", *needles)
    assert snapshot(existing_run) == before


def test_missing_dataset_file_names_the_path(tmp_path, existing_run):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "    env: {type: dataset, path: nowhere/rows.jsonl}\n")
    before = snapshot(existing_run)
    check_fails(invoke("run", str(cfg), "--run-dir", str(tmp_path / "new"), "-q"), "nowhere/rows.jsonl")
    assert not (tmp_path / "new").exists() and snapshot(existing_run) == before


def test_dataset_row_without_answer_names_file_and_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "    env: {type: dataset, path: rows.jsonl}\n")
    check_fails(invoke("run", str(cfg), "--run-dir", str(tmp_path / "new"), "-q"), "rows.jsonl:2", "answer")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("no_such_module_xyz:fn", "no_such_module_xyz"),
        ("tests.reward_fixtures:missing_fn", "missing_fn"),
        ("not_a_builtin", "not_a_builtin"),
    ],
)
def test_unimportable_reward_names_the_spec(tmp_path, spec, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + f"    rewards: [{{name: '{spec}'}}]\n")
    check_fails(invoke("run", str(cfg), "--run-dir", str(tmp_path / "new"), "-q"), "group a (rewards)", needle)
    assert not (tmp_path / "new").exists()


def test_existing_run_dir_is_refused_and_untouched(tmp_path, existing_run):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    before = snapshot(existing_run)
    check_fails(invoke("run", str(cfg), "--run-dir", str(existing_run), "-q"), "already exists")
    assert snapshot(existing_run) == before


def test_bad_cli_arguments(tmp_path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    check_fails(invoke("run", str(cfg), "steps"), "steps", "key=value")
    check_fails(invoke("run", str(cfg), "steps=0"), "steps", "greater than or equal to 1")
    check_fails(invoke("run", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    result = invoke("run", str(cfg), "--no-such-flag")
    assert result.exit_code == 2 and "--no-such-flag" in result.output
    check_fails(invoke("leaderboard", str(tmp_path)), "no leaderboard")


@pytest.mark.parametrize(
    "what, write, needles",
    [
        (
            "latin-1 config",
            lambda p: p.write_bytes("steps: 2\n# caf\xe9\n".encode("latin-1")),
            ["bad.yaml", "not a UTF-8"],
        ),
        ("binary garbage", lambda p: p.write_bytes(bytes(range(256)) * 4), ["bad.yaml"]),
        (
            "base_model is no path",
            lambda p: p.write_text(GOOD + "base_model: /no/such/model/dir\n"),
            ["base_model", "/no/such/model/dir", "downloads nothing"],
        ),
        (
            "base_model without config.json",
            lambda p: (
                (p.parent / "empty_model").mkdir() or p.write_text(GOOD + f"base_model: {p.parent / 'empty_model'}\n")
            ),
            ["base_model", "no config.json"],
        ),
        (
            "CSV row with more fields than the header",
            lambda p: _dataset(p, "rows.csv", "question,answer\n1+1?,2\n2+2?,4,extra\n"),
            ["rows.csv:3", "3 fields", "the header names 2"],
        ),
        (
            "the same, with prompt_column",
            lambda p: _dataset(p, "rows.csv", "text,answer\na,1\nb,2,x,y\n", "prompt_column: text, "),
            ["rows.csv:3", "4 fields"],
        ),
        (
            "dataset not UTF-8",
            lambda p: _dataset(p, "rows.jsonl", '{"question": "caf\xe9", "answer": "1"}\n'.encode("latin-1")),
            ["rows.jsonl", "not UTF-8"],
        ),
        (
            "every prompt longer than max_prompt_length",
            lambda p: _dataset(
                p,
                "rows.jsonl",
                '{"question": "%s", "answer": "1"}\n' % ("x " * 300),
                grpo="grpo: {max_prompt_length: 64}\n",
            ),
            ["group a (env)", "longer than grpo.max_prompt_length = 64", "the shortest has"],
        ),
        (
            "a reward factory that raises",
            lambda p: (
                (p.parent / "facts.py").write_text("def make(k):\n    raise ValueError('k must be > 0')\n"),
                p.write_text(GOOD + "    rewards: [{name: 'facts.py:make', params: {k: 0}}]\n"),
            ),
            ["group a (rewards)", "k must be > 0"],
        ),
        (
            "a user module named like lorapop's, missing",
            lambda p: p.write_text(GOOD + "    rewards: [{name: 'rewards:mine'}]\n"),
            ["'rewards' is lorapop's own module", "no rewards.py of yours"],
        ),
        (
            "an override of an unknown key",
            lambda p: (p.write_text(GOOD), ["grpo.nope=1"])[1],
            ["groups.0.grpo.nope", "unknown key"],
        ),
        ("an override of a bad value", lambda p: (p.write_text(GOOD), ["steps=many"])[1], ["steps", "integer"]),
        (
            "an override through a list index out of range",
            lambda p: (p.write_text(GOOD), ["groups.3.name=x"])[1],
            ["groups.3.name", "not an index"],
        ),
    ],
)
def test_bad_input_is_exit_2_without_traceback_or_files(tmp_path, what, write, needles):
    """#12: checked in the driver before the run directory exists: exit 2, one message, nothing written.
    ``write`` writes the config (and its neighbours) and may return overrides for the command line."""
    cfg = tmp_path / "bad.yaml"
    overrides = write(cfg)
    overrides = overrides if isinstance(overrides, list) else []
    result = invoke("run", str(cfg), *overrides, "--run-dir", str(tmp_path / "new"), "-q")
    check_fails(result, *needles)
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    assert not (tmp_path / "new").exists()


def _dataset(cfg: Path, name: str, content: str | bytes, env_extra: str = "", grpo: str = "") -> None:
    """A config whose group reads dataset ``name`` (written beside it with ``content``)."""
    (cfg.parent / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg.write_text(grpo + GOOD + f"    env: {{type: dataset, {env_extra}path: {name}}}\n")


def test_a_dataset_path_given_on_the_command_line_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    """#12: even with the shipped default config (whose folder is lorapop's configs/)."""
    from engine.config.loading import load_config

    (tmp_path / "rows.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config(None, ["groups.0.env={type: dataset, path: rows.jsonl}"])
    assert cfg.groups[0].env.path == str(tmp_path / "rows.jsonl")
    (tmp_path / "c.yaml").write_text(GOOD + "    env: {type: dataset, path: elsewhere.jsonl}\n")
    cfg, _ = load_config(tmp_path / "c.yaml", ["groups.0.env.path=sub/rows.jsonl"])
    assert cfg.groups[0].env.path == str(tmp_path / "sub" / "rows.jsonl")
    monkeypatch.chdir(tmp_path.parent)
    check_fails(
        invoke("run", "groups.0.env={type: dataset, path: rows.jsonl}", "--run-dir", str(tmp_path / "new"), "-q"),
        str(tmp_path.parent / "rows.jsonl"),
        "not found",
    )


def test_run_dir_under_a_file_is_refused(tmp_path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    (tmp_path / "afile").write_text("x")
    result = invoke("run", str(cfg), "--run-dir", str(tmp_path / "afile" / "run"), "-q")
    check_fails(result, "afile", "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_resume_of_an_incomplete_directory_is_refused(tmp_path, existing_run):
    before = snapshot(existing_run)  # its config.yaml is not a config
    check_fails(invoke("run", "--resume", str(existing_run), "-q"), "config.yaml", "unknown key")
    (existing_run / "config.yaml").write_text(GOOD)  # a config, but no run.json: not a run lorapop wrote
    before = snapshot(existing_run)
    check_fails(invoke("run", "--resume", str(existing_run), "-q"), str(existing_run), "not a complete lorapop run")
    assert snapshot(existing_run) == before
