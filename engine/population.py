"""The population on Ray: the rollout actor, one actor per group, and what keeps them going.

``Population`` owns the actors (Ray's supervisor pattern): it steps every live group, batching all
rollouts into one call; it restarts a group actor that died or raised from the last checkpoint
(``restart`` event) and marks a group that keeps failing as failed (``failed`` event) while the
others go on; it evaluates, checkpoints and applies rebalancing decisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.builders import GroupPlan
from engine.checkpoint import checkpoint_dir
from engine.faults import fault_point
from engine.results import event_row
from groups.rebalance import Decision


def actor_name(run_dir: Path, group: str) -> str:
    """Name of a group's first actor in Ray namespace ``lorapop`` (``ray.get_actor(name, namespace="lorapop")``)."""
    return f"lorapop-group:{Path(run_dir).name}:{group}"


class Population:
    def __init__(self, plans: list[GroupPlan], model_path: str, run_dir: Path, max_restarts: int,
                 log: Callable[[str], None] = print):
        import ray

        from engine.rollout.hf import HFRollout
        from groups.actor import default_threads

        self.plans = {p.name: p for p in plans}
        self.model_path, self.run_dir, self.max_restarts, self.log = model_path, Path(run_dir), max_restarts, log
        self.threads = default_threads(len(plans))
        self.restarts = {p.name: 0 for p in plans}
        self.failed: list[str] = []
        self.checkpoint_step: int | None = None
        self.rollout = ray.remote(num_cpus=0)(HFRollout).remote(model_path, {p.name: p.lora for p in plans})
        self.actors = {p.name: self._spawn(p) for p in plans}

    def _spawn(self, plan: GroupPlan):
        import ray

        from groups.actor import GroupActor

        k = self.restarts[plan.name]
        return ray.remote(num_cpus=0, max_restarts=0)(GroupActor).options(
            name=actor_name(self.run_dir, plan.name) + (f"#{k}" if k else ""), namespace="lorapop",
        ).remote(plan, self.model_path, self.rollout, self.threads)

    @property
    def live(self) -> list[str]:
        return [g for g in self.plans if g not in self.failed]

    def start(self, checkpoint_step: int | None) -> list[dict]:
        """Publish every group's adapter (version 0, or a checkpoint's state); returns start-up events."""
        import ray

        reports = ray.get([self.actors[g].startup_report.remote() for g in self.live])
        events = [event_row(0, r["group"], "prompts_dropped", f"{r['dropped_prompts']} rows dropped: prompt longer "
                            f"than max_prompt_length (never truncated)", value=float(r["dropped_prompts"]))
                  for r in reports if r["dropped_prompts"]]
        self.checkpoint_step = checkpoint_step
        if checkpoint_step is None:
            ray.get([self.actors[g].publish.remote() for g in self.live])
        else:
            d = checkpoint_dir(self.run_dir, checkpoint_step)
            ray.get([self.actors[g].load_checkpoint.remote(str(d / f"{g}.pt")) for g in self.live])
        return events

    # --- one step ---------------------------------------------------------------------------------

    def step(self, step: int) -> tuple[list[dict], list[dict]]:
        """Every live group's GRPO step; returns (their outputs, events). Rollouts of all groups go in one call."""
        import ray

        events: list[dict] = []
        groups = self.live
        request_refs = {g: self.actors[g].rollout_request.remote(step) for g in groups}
        requests, failed_now = self._gather(request_refs)
        names = [g for g in groups if g in requests]
        results_ref = self.rollout.generate.remote([requests[g] for g in names])
        fault_point("rollout", step)
        results = ray.get(results_ref)
        learn_refs = {g: self.actors[g].learn.remote(step, r) for g, r in zip(names, results)}
        outs, failed_learn = self._gather(learn_refs)
        for g, error in {**failed_now, **failed_learn}.items():
            out = self._recover(g, step, error, events)
            if out is not None:
                outs[g] = out
        return [outs[g] for g in groups if g in outs], events

    def _gather(self, refs: dict) -> tuple[dict, dict]:
        """Results by group, and the errors of groups whose actor died or raised."""
        import ray

        ok, failed = {}, {}
        for g, ref in refs.items():
            try:
                ok[g] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                failed[g] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
        return ok, failed

    def _recover(self, group: str, step: int, error: str, events: list[dict]) -> dict | None:
        """Restart ``group`` from the last checkpoint and redo its step alone, up to ``max_restarts`` times."""
        import ray

        while True:
            if self.restarts[group] >= self.max_restarts:
                self.failed.append(group)
                events.append(event_row(step, group, "failed", f"gave up after {self.restarts[group]} restarts: {error}"))
                self.log(f"group {group} failed: {error}")
                ray.kill(self.actors[group], no_restart=True)
                return None
            self.restarts[group] += 1
            events.append(event_row(step, group, "restart", f"restart {self.restarts[group]} from checkpoint "
                                                          f"step {self.checkpoint_step or 0}: {error}"))
            self.log(f"restarting group {group} (attempt {self.restarts[group]}): {error}")
            try:
                ray.kill(self.actors[group], no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
            self.actors[group] = self._spawn(self.plans[group])
            try:
                self._restore(group)
                return self._replay(group, step)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"

    def _restore(self, group: str) -> None:
        import ray

        actor = self.actors[group]
        if self.checkpoint_step is None:
            ray.get(actor.publish.remote())
        else:
            ray.get(actor.load_checkpoint.remote(str(checkpoint_dir(self.run_dir, self.checkpoint_step) / f"{group}.pt")))

    def _replay(self, group: str, step: int) -> dict:
        """Steps after the checkpoint, then ``step`` itself, for one group alone; only ``step``'s output is kept."""
        import ray

        actor, out = self.actors[group], None
        for s in range((self.checkpoint_step or 0) + 1, step + 1):
            request = ray.get(actor.rollout_request.remote(s))
            (result,) = ray.get(self.rollout.generate.remote([request]))
            out = ray.get(actor.learn.remote(s, result))
        return out

    # --- evaluation, checkpoints, rebalancing ------------------------------------------------------

    def evaluate(self, step: int, n: int, temperature: float, samples: int) -> list[dict]:
        import ray

        groups = self.live
        requests = ray.get([self.actors[g].eval_request.remote(step, n, temperature, samples) for g in groups])
        results = ray.get(self.rollout.generate.remote(requests))
        rows = ray.get([self.actors[g].evaluate.remote(step, r) for g, r in zip(groups, results)])
        return [row for group_rows in rows for row in group_rows]

    def save_checkpoints(self, step: int) -> None:
        import ray

        d = checkpoint_dir(self.run_dir, step)
        ray.get([self.actors[g].save_checkpoint.remote(str(d / f"{g}.pt")) for g in self.live])
        self.checkpoint_step = step

    def hparams(self) -> dict[str, dict]:
        import ray

        groups = self.live
        return dict(zip(groups, ray.get([self.actors[g].hparams.remote() for g in groups])))

    def apply(self, decision: Decision) -> None:
        """Carry out one decision: a weight + optimizer copy from the donor, or new hyper-parameters."""
        import ray

        if decision.action == "exploit_explore":
            state = self.actors[decision.donor].get_state.remote()
            ray.get(self.actors[decision.group].set_state.remote(state, decision.new[decision.group], True))
        else:
            ray.get([self.actors[g].set_hparams.remote(**hp) for g, hp in decision.new.items()])

    def save_adapters(self) -> dict[str, str]:
        import ray

        dirs = {g: str(self.run_dir / "adapters" / g) for g in self.live}
        ray.get([self.actors[g].save_adapter.remote(dirs[g]) for g in dirs])
        return dirs


