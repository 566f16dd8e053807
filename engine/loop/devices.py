"""Devices: where the services run and which groups each one serves.

A run spreads over ``ray.devices`` devices. Each has its own pair of services, a rollout service and
a trainer service with the base once, and serves a share of the groups: a group's requests go to its
device's engine, its update to its device's trainer, which publishes its adapter to that engine.
With more than one device the pairs are placed with a Ray placement group, one bundle per device (a
GPU on cuda, a CPU on the cpu), and each group's actor goes into its device's bundle, on the same node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Device:
    """One device: its services, the groups it serves, and its restarts."""

    index: int
    groups: list[str]
    bundle: int | None = None
    """Its bundle of the run's placement group (None: no placement group, one device)."""
    rollout: Any = None
    trainer: Any = None
    node: str | None = None
    """The Ray node its trainer runs on."""
    rollout_restarts: int = 0
    trainer_restarts: int = 0
    lost: bool = False
    """Its node was lost: its groups moved to another device (whose ``groups`` now include them)."""


def assign(loads: dict[str, int], n: int) -> list[list[str]]:
    """Groups over ``n`` devices, each to the least loaded so far, the heaviest first (``loads``: a
    group's tokens per step); each device's groups keep the config's order.

    >>> assign({"a": 4, "b": 4, "c": 8, "d": 1}, 2)
    [['c', 'd'], ['a', 'b']]
    """
    order = {g: i for i, g in enumerate(loads)}
    total = [0] * n
    out: list[list[str]] = [[] for _ in range(n)]
    for g in sorted(loads, key=lambda g: (-loads[g], order[g])):
        k = min(range(n), key=lambda k: (total[k], k))
        out[k].append(g)
        total[k] += loads[g]
    return [sorted(gs, key=order.__getitem__) for gs in out]


def resolve_devices(setting: int | str, device_type: str, groups: int) -> int:
    """How many devices a run uses: ``setting``, or with ``auto`` every GPU Ray sees on cuda (1 on the
    cpu); never more than there are groups. A number above what Ray has is a ``ValueError``."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if setting == "auto":
        n = max(1, gpus) if device_type == "cuda" else 1
    else:
        n = int(setting)
        if device_type == "cuda" and n > gpus:
            raise ValueError(f"ray.devices = {n}, but the Ray cluster has {gpus} GPUs")
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if device_type == "cpu" and n > 1 and n > cpus:
            raise ValueError(f"ray.devices = {n} on the cpu needs a CPU per device; the Ray cluster has {cpus}")
    return min(n, groups)


def placement_group(n: int, device_type: str, strategy: str, timeout_s: float = 300.0):
    """A placement group of ``n`` device bundles (a GPU each on cuda, a CPU each on the cpu), ready;
    ``strategy`` ``auto``: PACK on cuda (a node's GPUs first), SPREAD on the cpu. Waits at most
    ``timeout_s`` for the cluster to have room (then ``RuntimeError``)."""
    import ray
    from ray.util.placement_group import placement_group as make
    from ray.util.placement_group import remove_placement_group

    resource = "GPU" if device_type == "cuda" else "CPU"
    if strategy == "auto":
        strategy = "PACK" if device_type == "cuda" else "SPREAD"
    pg = make([{resource: 1}] * n, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(
            f"Ray could not place {n} devices ({resource} 1 each, {strategy}) within {timeout_s:.0f} s; "
            f"the cluster has {ray.cluster_resources()}"
        )
    return pg


def in_bundle(pg, bundle: int | None) -> dict:
    """Actor options that put an actor into ``bundle`` of ``pg`` (nothing without a placement group)."""
    if pg is None or bundle is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=False
        )
    }


def node_alive(node: str | None) -> bool:
    """Whether Ray still counts ``node`` among its live nodes (True when unknown)."""
    import ray

    if node is None:
        return True
    return any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())
