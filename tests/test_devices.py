"""#16: a population over several devices (``ray.devices``) on one machine: each device's services serve
its share of the groups, a PBT copy crosses devices, and a device count Ray cannot place is refused."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow  # a real local Ray with two pairs of services

CONFIG = """
seed: 3
steps: 2
eval_prompts: 0
ray: {devices: 2, torch_threads: 1}
grpo: {prompts_per_step: 2, group_size: 4, max_completion_length: 24, lr: 0.01}
groups:
  - {name: a}
  - {name: b}
  - {name: c, grpo: {prompts_per_step: 4}}
"""


@pytest.fixture(scope="module")
def population(tmp_path_factory, tiny_model_path):
    import ray

    from engine.config.builders import group_plans
    from engine.config.loading import load_config
    from engine.loop.population import Population

    d = tmp_path_factory.mktemp("devices")
    (d / "c.yaml").write_text(CONFIG)
    cfg, config_dir = load_config(d / "c.yaml")
    ray.init(num_cpus=2, include_dashboard=False)
    pop = Population(group_plans(cfg, config_dir), tiny_model_path, d / "run", 1, lambda m: None, devices=2)
    try:
        yield pop, pop.start(None)
    finally:
        ray.shutdown()


def test_each_device_serves_and_trains_its_own_share_of_the_groups(population):
    """c (twice the prompts) alone on one device, a and b on the other; each device's engine and trainer hold
    only its groups, and a step trains all three (each adapter one version on)."""
    import ray

    pop, events = population
    assert [d.groups for d in pop.devices] == [["c"], ["a", "b"]]
    placed = {e["group"]: e["detail"] for e in events if e["kind"] == "placement"}
    assert placed["c"].startswith("device 0 on node ") and placed["a"].startswith("device 1 on node ")
    assert sorted(e["group"] for e in events if e["kind"] == "runtime") == [
        "rollout:0",
        "rollout:1",
        "trainer:0",
        "trainer:1",
    ]
    for device in pop.devices:
        assert set(ray.get(device.rollout.adapter_versions.remote())) == set(device.groups)
    outs, step_events = pop.step(1)
    assert sorted(o.metrics["group"] for o in outs) == ["a", "b", "c"] and step_events == []
    for device in pop.devices:
        assert ray.get(device.rollout.adapter_versions.remote()) == {g: 1 for g in device.groups}


def test_a_pbt_copy_crosses_devices_with_weights_and_optimizer_state(population):
    """exploit_explore of b (device 1) from c (device 0): b's slot takes c's adapter and Adam moments, keeps
    its own hyper-parameters, gets a new version, and that version is what b's engine serves."""
    import ray

    from groups.rebalance import Decision

    pop, _ = population
    c_dev, b_dev = pop.device_of["c"], pop.device_of["b"]
    assert c_dev is not b_dev
    before = ray.get(b_dev.trainer.slot_state.remote("b"))
    donor = ray.get(c_dev.trainer.slot_state.remote("c"))
    assert any(not torch.equal(before.adapter[k], donor.adapter[k]) for k in donor.adapter)
    version = ray.get(b_dev.rollout.adapter_versions.remote())["b"]
    new_hp = {"lr": 0.02}
    pop.apply(Decision("exploit_explore", "b", "c", 0.5, 0.0, 1.0, new={"b": new_hp}))
    after = ray.get(b_dev.trainer.slot_state.remote("b"))
    assert all(torch.equal(after.adapter[k], donor.adapter[k]) for k in donor.adapter)
    moments = [s["exp_avg"] for s in after.optimizer["state"].values()]
    assert moments and all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, donor.optimizer["state"].values()))
    assert after.hparams == before.hparams  # the slot keeps its own; the group actor's lr is the new one
    assert ray.get(pop.actors["b"].hparams.remote())["lr"] == 0.02
    assert ray.get(b_dev.rollout.adapter_versions.remote())["b"] == version + 1


def test_more_devices_than_ray_can_place_is_a_config_error(population):
    """``ray.devices`` above what the Ray cluster has (here 2 CPUs) names the field and what Ray has."""
    from engine.config.loading import ConfigError, load_config
    from engine.loop.coordinator import _devices

    cfg, _ = load_config(None, ["ray.devices=3"])
    with pytest.raises(ConfigError, match=r"ray.devices = 3 on the cpu needs a CPU per device; the Ray cluster has 2"):
        _devices(cfg, "cpu", 3)
    assert _devices(load_config(None, ["ray.devices=auto"])[0], "cpu", 3) == 1  # auto on the cpu: one device
