"""Config loading: validation messages name the field, overrides apply, group blocks merge."""

import pytest

from engine.config.builders import group_plans
from engine.config.loading import ConfigError, apply_override, load_config


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
steps: 3
groups:
  - name: a
"""


def test_defaults_and_overrides(tmp_path):
    cfg, _ = load_config(write(tmp_path, BASE), ["steps=7", "grpo.lr=1e-3", "groups.0.env.difficulty=2"])
    assert cfg.steps == 7
    assert cfg.groups[0].grpo.lr == 1e-3  # run-level block merged into the group
    assert cfg.groups[0].env.difficulty == 2


def test_group_block_overrides_run_block(tmp_path):
    text = """
grpo: {lr: 0.01, group_size: 4}
groups:
  - name: a
    grpo: {lr: 0.002}
  - name: b
"""
    cfg, _ = load_config(write(tmp_path, text))
    assert (cfg.groups[0].grpo.lr, cfg.groups[0].grpo.group_size) == (0.002, 4)
    assert (cfg.groups[1].grpo.lr, cfg.groups[1].grpo.group_size) == (0.01, 4)


@pytest.mark.parametrize(
    "text, field, words",
    [
        (BASE + "bogus: 1\n", "bogus", "unknown key"),
        (BASE + "    grpo: {temprature: 0.7}\n", "groups.0.grpo.temprature", "unknown key"),
        (BASE.replace("steps: 3", "steps: many"), "steps", "integer"),
        (BASE + "    grpo: {group_size: 1}\n", "groups.0.grpo.group_size", "greater than or equal to 2"),
        (BASE + "    env: {type: dataset}\n", "groups.0.env.dataset.path", "Field required"),
        (BASE + "    env: {type: nosuch}\n", "groups.0.env", "arithmetic, dataset, medical"),
        ("groups: []\n", "groups", "at least 1"),
        (BASE + "    grpo: {micro_batch_size: 4}\n", "groups.0.grpo", "training.micro_batch_tokens"),
        (BASE + "training: {num_gpus_per_group: 0.1}\n", "training", "training.num_gpus"),
        (BASE + "training: {micro_batch_tokens: -8}\n", "training.micro_batch_tokens", ">= 0"),
        (BASE + "rollout: {engine_kwargs: {dtype: float16}}\n", "rollout.engine_kwargs", "'dtype'"),
        (BASE + "rollout: {engine_kwargs: {max_loras: 3}}\n", "rollout.engine_kwargs", "'max_loras'"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert f"{field}:" in msg and words in msg and "c.yaml" in msg


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:3"):
        load_config(write(tmp_path, "steps: 3\ngroups:\n  - name: [a\n"))


def test_bad_overrides():
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "steps")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"groups": [{}]}, "groups.3.name=x")


def test_replicas_get_names_and_seeds(tmp_path):
    cfg, d = load_config(write(tmp_path, "seed: 5\ngroups:\n  - {name: a, num_groups: 3}\n  - {name: b, seed: 42}\n"))
    plans = group_plans(cfg, d)
    assert [(p.name, p.cohort, p.seed) for p in plans] == [
        ("a-0", "a", 5),
        ("a-1", "a", 6),
        ("a-2", "a", 7),
        ("b", "b", 42),
    ]


def test_duplicate_group_names_rejected(tmp_path):
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(write(tmp_path, "groups:\n  - {name: a}\n  - {name: a}\n"))


def test_every_shipped_config_validates():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        cfg, d = load_config(path)
        assert group_plans(cfg, d)


def test_explicit_cohort_groups_specs_together(tmp_path):
    cfg, d = load_config(
        write(tmp_path, "groups:\n  - {name: a, num_groups: 2, cohort: c}\n  - {name: b, cohort: c}\n  - {name: z}\n")
    )
    assert [(p.name, p.cohort) for p in group_plans(cfg, d)] == [("a-0", "c"), ("a-1", "c"), ("b", "c"), ("z", "z")]


@pytest.mark.parametrize(
    "device, share, ckpt, expected",
    [
        ("cpu", "auto", "auto", (True, False, 0)),
        ("cuda", "auto", "auto", (False, True, 32768)),
        ("cuda", "true", "false", (True, False, 32768)),
        ("cuda", "true", "auto", (False, True, 32768)),
        ("cpu", "false", "true", (False, True, 0)),
    ],
)
def test_trainer_defaults_per_device_unless_told(tmp_path, device, share, ckpt, expected):
    """cpu: prompts shared, one pass; cuda: activation checkpointing and 32768-token passes; checkpointing
    turns prompt sharing off (a shared prompt's KV cache is not recomputed)."""
    from engine.loop.coordinator import resolve_training

    cfg, _ = load_config(
        write(tmp_path, BASE),
        [f"training.device={device}", f"training.share_prompts={share}", f"training.gradient_checkpointing={ckpt}"],
    )
    resolved = resolve_training(cfg.training.model_dump())
    assert resolved["device"] == device
    assert (resolved["share_prompts"], resolved["gradient_checkpointing"], resolved["micro_batch_tokens"]) == expected
    assert resolved["dtype"] == ("bfloat16" if device == "cuda" else "float32")


def test_vllm_engine_is_sized_to_one_step_and_the_users_engine_kwargs_win():
    """#11: max_num_seqs = one step's requests (rounded up to 8), CUDA graphs up to that batch, no graphs
    without LoRA; what the user sets in rollout.engine_kwargs wins, a compilation_config merged key by key."""
    from engine.rollout.vllm import engine_defaults

    kw = engine_defaults(8 * 4 * 8)
    assert kw["max_num_seqs"] == 256
    assert kw["compilation_config"] == {"cudagraph_specialize_lora": False, "max_cudagraph_capture_size": 256}
    assert (
        engine_defaults(3)["max_num_seqs"] == 8
        and engine_defaults(2048)["compilation_config"]["max_cudagraph_capture_size"] == 512
    )
    mine = engine_defaults(
        256, {"max_num_seqs": 64, "compilation_config": {"cudagraph_specialize_lora": True}, "enforce_eager": True}
    )
    assert mine["max_num_seqs"] == 64 and mine["enforce_eager"] is True
    assert mine["compilation_config"] == {"cudagraph_specialize_lora": True, "max_cudagraph_capture_size": 64}
    assert engine_defaults(256, {"compilation_config": 0})["compilation_config"] == 0  # a level: the user's as it is
