"""The trainer service as the engine builds it: the base once whatever the number of groups, group
actors with no model, slots that start as the base and publish in PEFT keys."""

from __future__ import annotations

import torch

from engine.config.builders import group_plans
from engine.config.loading import load_config
from engine.trainer.service import SlotSpec, TrainerService
from engine.trainer.slots import SlotHParams

CONFIG = """
base_model: {model}
grpo: {{lr: 0.001}}
groups:
  - {{name: g, num_groups: 4}}
  - {{name: small, lora: {{r: 4, target_modules: [q_proj, v_proj]}}}}
"""


def _plans(tmp_path, model):
    (tmp_path / "c.yaml").write_text(CONFIG.format(model=model))
    cfg, config_dir = load_config(tmp_path / "c.yaml")
    return group_plans(cfg, config_dir)


def _specs(plans):
    return {p.name: SlotSpec(p.lora.model_dump(), p.seed, SlotHParams.from_grpo(p.grpo)) for p in plans}


def test_the_trainer_holds_one_base_whatever_the_number_of_groups(tmp_path, tiny_model_path):
    torch.set_num_threads(1)
    plans = _plans(tmp_path, tiny_model_path)
    one, five = TrainerService(tiny_model_path, _specs(plans[:1])), TrainerService(tiny_model_path, _specs(plans))
    assert one.base_storages() == five.base_storages() > 0
    base = sum(p.numel() for p in one.model.base.parameters() if not p.requires_grad)
    assert base == sum(p.numel() for p in five.model.base.parameters() if not p.requires_grad)
    adapter = [sum(p.numel() for p in s.params) for s in five.model.slots.values()]
    assert adapter[:4] == [adapter[0]] * 4 and adapter[4] < adapter[0]  # r 4 on q/v only: a smaller slot
    # slots start as the base (B = 0), each from its own seed, and publish in PEFT's keys
    states = five.adapter_states(list(five.model.slots))
    assert all(k.startswith("base_model.model.") and ".lora_" in k for k in states["g-0"])
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in states["g-1"].items() if "lora_B" in k)
    a0 = next(v for k, v in states["g-0"].items() if "lora_A" in k)
    a1 = next(v for k, v in states["g-1"].items() if "lora_A" in k)
    assert not torch.equal(a0, a1)


def test_group_actors_load_no_model(tmp_path, tiny_model_path):
    from groups.actor import GroupActor

    plans = _plans(tmp_path, tiny_model_path)
    actor = GroupActor(plans[0], tiny_model_path)
    assert not any(isinstance(v, torch.nn.Module) or isinstance(v, torch.Tensor) for v in vars(actor).values())
    request = actor.begin(1)
    assert request is not None and request.group == "g-0"


def test_an_adapter_the_trainer_writes_for_vllm_loads_in_peft_as_the_slot(tmp_path, tiny_model_path):
    """The vLLM publish path: the trainer writes each adapter's files itself (one flat bf16 buffer, its
    own safetensors writer, vLLM's adapter config). PEFT loads the directory and serves the slot's
    weights in bf16; a new version goes to a new directory."""
    from peft import PeftModel
    from safetensors import safe_open

    from engine.models.base import load_base

    plans = _plans(tmp_path, tiny_model_path)
    svc = TrainerService(tiny_model_path, _specs(plans[-2:]))  # g-3 (all-linear, r 8) and small (q/v, r 4)
    with torch.no_grad():
        for slot in svc.model.slots.values():
            for p in slot.params:
                p.add_(0.01 * torch.randn_like(p))
    for group in svc.model.slots:
        first = svc.write_adapter(group, str(tmp_path / "shm"), "bfloat16")
        svc.versions[group] += 1
        second = svc.write_adapter(group, str(tmp_path / "shm"), "bfloat16")
        assert first != second and first.parent == second.parent == tmp_path / "shm" / group
        assert not list(first.parent.glob("*.tmp"))
        expected = svc.adapter_states([group])[group]
        with safe_open(str(second / "adapter_model.safetensors"), "pt") as f:
            assert sorted(f.keys()) == sorted(expected)
            assert all(torch.equal(f.get_tensor(k), v.to(torch.bfloat16)) for k, v in expected.items())
        model = PeftModel.from_pretrained(load_base(tiny_model_path), str(second))
        loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
        assert len(loaded) == len(expected)
        for k, v in expected.items():
            name = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            assert torch.equal(loaded[name].detach().to(torch.bfloat16), v.to(torch.bfloat16)), k
