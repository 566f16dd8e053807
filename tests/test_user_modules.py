"""#12: ``module:function`` rewards resolve in the driver's pre-run check exactly as in the group actors
(the working directory and the config's folder searched), and a user module named like one of lorapop's
own packages (``rewards``, ``envs``, ...) is the user's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

USER_REWARDS = """
def shout(prompts, completions, **kwargs):
    return [1.0 if "!" in str(c) else 0.0 for c in completions]
"""


def _config(folder: Path, reward: str) -> Path:
    (folder / "c.yaml").write_text(f"""
steps: 1
grpo: {{prompts_per_step: 1, group_size: 2, max_completion_length: 8}}
groups:
  - name: a
    rewards: [{{name: "{reward}"}}]
""")
    return folder / "c.yaml"


@pytest.mark.parametrize(
    "layout, spec",
    [
        ({"my_rewards.py": USER_REWARDS}, "my_rewards:shout"),
        ({"rewards.py": USER_REWARDS}, "rewards:shout"),  # lorapop has a package of that name
        ({"envs/__init__.py": "", "envs/scoring.py": USER_REWARDS}, "envs.scoring:shout"),  # and of this one
    ],
)
def test_driver_and_group_actor_load_the_users_module(tmp_path, tiny_model_path, layout, spec, monkeypatch):
    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from engine.loop.coordinator import preflight
    from groups.actor import GroupActor

    for name, text in layout.items():
        (tmp_path / "cfg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cfg" / name).write_text(text)
    monkeypatch.chdir(tmp_path)  # the config's folder is not the working directory
    path = sys.path[:]
    cfg, config_dir = load_config(_config(tmp_path / "cfg", spec))
    plans = group_plans(cfg, config_dir)
    preflight(plans)  # the driver's check: no ModuleNotFoundError, nothing left on sys.path
    assert sys.path == path
    actor = GroupActor(plans[0], tiny_model_path)
    ((name, fn, _),) = actor.reward_fns
    assert name == "shout" and Path(fn.__code__.co_filename).resolve().is_relative_to((tmp_path / "cfg").resolve())
    assert fn(prompts=["p", "p"], completions=["hi!", "hi"]) == [1.0, 0.0]


def test_a_users_module_from_the_working_directory(tmp_path, tiny_model_path, monkeypatch):
    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from engine.loop.coordinator import preflight

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "team_rewards.py").write_text(USER_REWARDS)
    (tmp_path / "cfg").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cfg, config_dir = load_config(_config(tmp_path / "cfg", "team_rewards:shout"))
    preflight(group_plans(cfg, config_dir))


def test_a_missing_user_module_named_like_lorapops_says_so(tmp_path):
    """No rewards.py of the user's: the message says 'rewards' is lorapop's own, exit 2, nothing written."""
    cfg = _config(tmp_path, "rewards:shout")
    proc = run_cli("run", str(cfg), "--run-dir", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'rewards' is lorapop's own module" in proc.stderr and "no rewards.py of yours" in proc.stderr
    assert not (tmp_path / "run").exists()
