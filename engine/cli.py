"""The ``lorapop`` command line.

    lorapop run                                  # configs/default.yaml: 3 groups on builtin:tiny, CPU
    lorapop run configs/default.yaml steps=5 grpo.lr=1e-3 --run-dir runs/try
    lorapop run my.yaml --address auto           # on an existing Ray cluster
    lorapop run --resume runs/<run>              # continue after the last checkpoint
    lorapop leaderboard runs/<run> [--format table|csv|json|markdown]
    lorapop leaderboard runs                     # every run under a directory, compared
    lorapop plot runs/<run>                      # runs/<run>/plot.png
    lorapop build-tiny [--out DIR] [key=value ...]   # rebuild builtin:tiny's shipped weights (or a variant)
    lorapop export runs/<run> --group NAME [--merged] [--out DIR]   # a group's PEFT adapter, or a merged model
    lorapop chat runs/<run> --group NAME|auto [--prompt TEXT ...]   # replies (CPU; stdin without --prompt)
    lorapop serve runs/<run> [--port 8000] [--print-command] [-- VLLM_ARGS]   # vLLM OpenAI server (GPU)

Bad input (config, dataset, reward function, argument) prints one clear message naming the field,
file or line and exits with status 2 before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train a population of LoRA adapters with GRPO.")
err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # piped output: tables are not squeezed to 80 columns

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    config: str | None = typer.Argument(None, help="YAML config (default: the shipped configs/default.yaml)."),
    overrides: list[str] | None = typer.Argument(
        None, help="key=value overrides, e.g. steps=5 grpo.lr=1e-3 groups.0.env.difficulty=2."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default: <output_dir>/<config>-<timestamp>); must not exist."
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address ('auto', 'ray://head:10001'); default: embedded local Ray."
    ),
    storage_path: str | None = typer.Option(
        None,
        "--storage-path",
        help="Parent of the run directory (the config's storage_path / output_dir); on a cluster, a path every node reaches.",
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run directory after its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live progress view."),
) -> None:
    """Train the population described by CONFIG and write Parquet results to the run directory."""
    from engine.config.loading import ConfigError, load_config
    from engine.loop.coordinator import RunStopped, default_run_dir
    from engine.loop.coordinator import resume as resume_population
    from engine.loop.coordinator import run as run_population
    from engine.loop.progress import LiveProgress

    if resume is not None:
        if config or overrides or run_dir or storage_path:
            _fail("--resume takes the run directory only: its config.yaml is the config")
        if not (resume / "config.yaml").is_file():
            _fail(f"{resume}: not a lorapop run directory (no config.yaml)")
        try:
            cfg, _ = load_config(resume / "config.yaml")
        except ConfigError as e:
            _fail(str(e))
        progress = None if quiet else LiveProgress(out, cfg)
        try:
            with progress or _Null():
                summary = resume_population(
                    resume, on_step=progress.update if progress else None, log=lambda m: err.print(m, highlight=False)
                )
        except (ConfigError, NotImplementedError) as e:
            _fail(str(e))
        except (KeyboardInterrupt, RunStopped) as e:
            _stopped(resume, e)
        _finish(summary)
        return
    overrides = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `lorapop run steps=5`: no config file, just overrides
        config = None
    if address:
        overrides.append(f"ray.address={address}")
    if storage_path:
        overrides.append(f"output_dir={storage_path}")
    try:
        cfg, config_dir = load_config(config, overrides)
    except ConfigError as e:
        _fail(str(e))
    target = run_dir or default_run_dir(cfg, Path(config).stem if config else "default")
    if target.exists():
        _fail(f"{target}: run directory already exists (choose another --run-dir or run_name)")
    progress = None if quiet else LiveProgress(out, cfg)
    try:
        with progress or _Null():
            summary = run_population(
                cfg,
                config_dir,
                target,
                on_step=progress.update if progress else None,
                log=lambda m: err.print(m, highlight=False),
            )
    except (ConfigError, NotImplementedError) as e:
        _fail(str(e))
    except (KeyboardInterrupt, RunStopped) as e:
        _stopped(target, e)
    _finish(summary)


def _stopped(run_dir: Path, e: BaseException) -> None:
    """A run stopped by Ctrl-C (exit 130) or SIGTERM (143): where it got to and how to go on."""
    from engine.loop.coordinator import RunStopped
    from engine.results.checkpoint import latest_checkpoint
    from engine.results.tables import part_step

    name = e.signal_name if isinstance(e, RunStopped) else "Ctrl-C"
    code = 143 if name == "SIGTERM" else 130
    if not (run_dir / "config.yaml").is_file():
        err.print(f"stopped ({name}) before the run started; nothing was written", highlight=False)
        raise typer.Exit(code)
    steps = [part_step(p) for p in (run_dir / "steps").glob("part-*.parquet")]
    try:
        found = latest_checkpoint(run_dir)
    except (OSError, ValueError, KeyError):
        found = None
    where = f"step {found[0]}'s checkpoint" if found else "the start (no checkpoint yet)"
    err.print(
        f"stopped ({name}) after step {max(steps, default=0)}; resuming continues from {where}:\n"
        f"  lorapop run --resume {run_dir}",
        highlight=False,
        soft_wrap=True,
    )  # one line to copy
    raise typer.Exit(code)


def _finish(summary) -> None:
    from engine.loop.progress import leaderboard_table

    out.print(leaderboard_table(summary.leaderboard, title=f"leaderboard — {summary.run_dir}"))
    out.print(f"results: {summary.run_dir}  ({summary.seconds:.0f}s)")
    if summary.failed_groups:
        why = "; ".join(f"{g}: {summary.failures.get(g) or 'see events/'}" for g in summary.failed_groups)
        everyone = len(summary.failed_groups) == len(summary.leaderboard)
        _fail(
            f"{'every group failed' if everyone else 'groups failed'}: {', '.join(summary.failed_groups)} ({why})",
            EXIT_FAILED,
        )


@app.command()
def leaderboard(
    path: Path = typer.Argument(..., help="A run directory, or a directory of runs to compare across."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | markdown"),
) -> None:
    """Rank a run's groups by score (or every run's groups under a directory of runs)."""
    from engine.loop.progress import leaderboard_table, load_leaderboards

    if fmt not in ("table", "csv", "json", "markdown"):
        _fail(f"--format: expected table, csv, json or markdown, got {fmt!r}")
    try:
        board = load_leaderboards(path)
    except FileNotFoundError as e:
        _fail(str(e))
    if fmt == "table":
        out.print(leaderboard_table(board, title=f"leaderboard — {path}"))
    elif fmt == "csv":
        sys.stdout.write(board.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(board.to_json(orient="records", indent=1) + "\n")
    else:
        sys.stdout.write(board.to_markdown(index=False) + "\n")


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    output: Path | None = typer.Option(None, "--output", "-o", help="PNG path (default RUN_DIR/plot.png)."),
) -> None:
    """Write a PNG of each group's reward and accuracy over steps (rebalancing and failures marked) and,
    when the run has held-out evaluations, its eval accuracy."""
    from engine.results.plots import run_figure

    try:
        fig = run_figure(run_dir)
    except FileNotFoundError as e:
        _fail(str(e))
    path = output or run_dir / "plot.png"
    fig.savefig(path, dpi=110)
    out.print(f"wrote {path}")


@app.command("build-tiny")
def build_tiny(
    settings: list[str] | None = typer.Argument(
        None,
        help="tiny_model settings to change, e.g. seed=1 copy_steps=400 (engine/config/schema.py TinyModelConfig).",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Output directory (default: the shipped engine/models/assets/builtin-tiny, replaced whole)."
    ),
) -> None:
    """Build builtin:tiny from its recipe (engine/models/tiny.py) and write it with a manifest of how it was built.

    With no settings and no --out this reproduces the weights the package ships; ATEN_CPU_CAPABILITY
    (default, avx2, avx512) picks the CPU kernels the build uses, and with them the exact weights.
    """
    from pydantic import ValidationError

    from engine.config.loading import format_validation
    from engine.config.schema import TinyModelConfig
    from engine.models.tiny import SHIPPED_DIR, write_build

    fields: dict[str, str] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"setting {item!r}: expected key=value, e.g. seed=1")
        fields[key] = value
    try:
        config = TinyModelConfig(**fields)
    except ValidationError as e:
        _fail(format_validation(e, "tiny_model"))
    target = out_dir or SHIPPED_DIR
    if target.exists() and not target.is_dir():
        _fail(f"--out {target}: exists and is not a directory")
    manifest = write_build(target, config.model_dump(), log=lambda m: err.print(m, highlight=False))
    out.print(
        f"wrote {target} (settings key {manifest['settings_key']}, cpu {manifest['cpu_capability']}, "
        f"{manifest['build_seconds']:.0f}s, sha256 {manifest['model_sha256'][:12]})"
    )


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    group: str = typer.Option(..., "--group", "-g", help="The group whose adapter to export."),
    merged: bool = typer.Option(
        False, "--merged", help="Write the base with the adapter merged in, as a plain Hugging Face model."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Target directory, which must not exist (default RUN_DIR/export/GROUP[-merged])."
    ),
) -> None:
    """Export a group's adapter in PEFT format (base_model_name_or_path set to the base on this machine),
    or with --merged the base with the adapter merged in; the tokenizer and chat template go with it."""
    from engine.config.loading import ConfigError
    from engine.models.export import default_export_dir, export_group

    target = out_dir or default_export_dir(run_dir, group, merged)
    try:
        path = export_group(run_dir, group, target, merged)
    except ConfigError as e:
        _fail(str(e))
    kind = "merged model (AutoModelForCausalLM)" if merged else "PEFT adapter (PeftModel.from_pretrained)"
    out.print(f"wrote {path}: group {group}, {kind}")


@app.command()
def chat(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    group: str = typer.Option(
        ..., "--group", "-g", help="The group to talk to; auto: the group whose domain fits each prompt."
    ),
    prompt: list[str] | None = typer.Option(
        None, "--prompt", "-p", help="A prompt (repeatable); none: one per stdin line."
    ),
    system: str | None = typer.Option(None, "--system", help="System prompt (default: the group's env's)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy."),
) -> None:
    """Answer prompts with a group's adapter on its base (transformers on the CPU, no vLLM), each
    prompt sent as the group's env sent its own: with the env's system prompt, through the chat template."""
    from engine.config.loading import ConfigError
    from engine.models.chat import chat as replies

    prompts = prompt if prompt else (line.rstrip("\n") for line in sys.stdin if line.strip())
    try:
        for routed, text in replies(run_dir, group, prompts, system, max_new_tokens, temperature):
            sys.stdout.write(f"[{routed}] {text}\n" if group == "auto" else text + "\n")
            sys.stdout.flush()
    except ConfigError as e:
        _fail(str(e))


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    vllm_args: list[str] | None = typer.Argument(
        None, help="After --: more `vllm serve` arguments, e.g. -- --gpu-memory-utilization 0.5.", show_default=False
    ),
    host: str = typer.Option("0.0.0.0", "--host", help="Address the server listens on."),
    port: int = typer.Option(8000, "--port", help="Port the server listens on."),
    print_command: bool = typer.Option(
        False, "--print-command", help="Print the vLLM command line (with its environment) and exit; no GPU needed."
    ),
) -> None:
    """Serve every group's adapter with vLLM's OpenAI-compatible server (needs vLLM and a GPU): a request's
    model is a group's name, the base's, or auto (the group whose domain fits the prompt)."""
    import os
    import shlex

    from engine.config.loading import ConfigError
    from engine.models.serve import serve_command, serve_requirements

    try:
        argv, env = serve_command(run_dir, host, port, vllm_args or [])
    except ConfigError as e:
        _fail(str(e))
    if print_command:
        sys.stdout.write(shlex.join([f"{k}={v}" for k, v in env.items()] + argv) + "\n")
        return
    problem = serve_requirements(run_dir)
    if problem:
        _fail(problem)
    err.print(f"serving {run_dir}: {shlex.join(argv)}", highlight=False, soft_wrap=True)
    os.execve(argv[0], argv, {**os.environ, **env})  # vLLM takes over this process (and its signals)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
