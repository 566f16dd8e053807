"""Export one trained group of a run: its PEFT adapter, or the base with the adapter merged in.

    lorapop export runs/<run> --group medical                 # runs/<run>/export/medical: a PEFT adapter
    lorapop export runs/<run> --group medical --merged --out m   # m: a plain Hugging Face model

The adapter directory is what ``PeftModel.from_pretrained`` loads, with ``base_model_name_or_path``
pointing at the base on this machine and the tokenizer (chat template included) beside it. The merged
directory is what ``AutoModelForCausalLM.from_pretrained`` loads, with no PEFT left in it. Either is
written whole beside its target and renamed into place; an existing target is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def default_export_dir(run_dir: str | Path, group: str, merged: bool) -> Path:
    """``RUN_DIR/export/<group>`` (``<group>-merged`` for a merged model)."""
    return Path(run_dir) / "export" / (f"{group}-merged" if merged else group)


def export_group(run_dir: str | Path, group: str, out: str | Path, merged: bool = False) -> Path:
    """Write group ``group``'s adapter (or, with ``merged``, the base with it merged in) to ``out``.

    Raises ``ConfigError`` (naming the run, the group or the target) before writing anything when the
    run has no adapter of that group or ``out`` already exists.
    """
    from engine.config.loading import ConfigError
    from engine.models.adapters import group_adapter_dir, load_group_model, run_base_model
    from engine.models.base import load_tokenizer

    if not (Path(run_dir) / "run.json").is_file():
        raise ConfigError(f"{run_dir}: not a lorapop run directory (no run.json)")
    out = Path(out).resolve()
    if out.exists():
        raise ConfigError(f"--out {out}: already exists (choose another directory or remove it)")
    adapter = group_adapter_dir(run_dir, group)  # (names the run's groups if this one has no adapter)
    if merged:
        model, tokenizer = load_group_model(run_dir, group)
    else:  # the adapter's files as they are: no model to load
        base = run_base_model(run_dir)
        tokenizer = load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if merged:
            model.merge_and_unload().save_pretrained(tmp)
        else:
            for f in adapter.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
            config = json.loads((tmp / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = base  # where the base is on this machine
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # (mkdtemp makes it private)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
