"""The population on Ray: each device's rollout and trainer services, one actor per group, and what keeps
them going.

``Population`` owns the actors (Ray's supervisor pattern). The base is held once per service and
device (``engine.loop.devices``): each device's rollout service generates for its groups in one batch,
its trainer service (one slot per group) updates them in one fused step and publishes their adapters
in one call; group actors hold no model. It restarts a group actor that died or raised from the last
checkpoint (``restart`` event), and a device's trainer with all its slots likewise; the groups of a
device whose node was lost move to a device that is left (``lost`` and ``restart`` events); a group
that keeps failing is marked failed (``failed`` event) while the others go on; it evaluates,
checkpoints and applies rebalancing decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config.builders import GroupPlan, build_games
from engine.config.faults import fault_point
from engine.loop.devices import Device, assign, in_bundle, node_alive, placement_group
from engine.results.checkpoint import checkpoint_dir
from engine.results.tables import event_row
from groups.actor import StepOutput
from groups.rebalance import Decision

ROWS_USED = "rows_used"
"""Key of a group's dataset position (training rows consumed) in a checkpoint's hyper-parameters."""


class _ReplayError(RuntimeError):
    """A group (or a game partner) failed again while its steps were being redone."""


def _error_text(e: BaseException) -> str:
    """A dead or failed actor's error in one line: its type and the last line of its message."""
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"


def _kill(actor) -> None:
    """Kill an actor for good (one that died already is fine)."""
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass


def actor_name(run_dir: Path, group: str) -> str:
    """Name of a group's first actor in Ray namespace ``lorapop`` (``ray.get_actor(name, namespace="lorapop")``)."""
    return f"lorapop-group:{Path(run_dir).name}:{group}"


class Population:
    def __init__(
        self,
        plans: list[GroupPlan],
        model_path: str,
        run_dir: Path,
        max_restarts: int,
        log: Callable[[str], None] = print,
        backend: str = "hf",
        rollout: dict | None = None,
        training: dict | None = None,
        torch_threads: int | None = None,
        devices: int = 1,
        placement_strategy: str = "auto",
    ):
        """``rollout``: the vllm engine's settings (``RolloutConfig``); ``training``: the trainer's
        ``{"device", "dtype", "num_gpus", "share_prompts", "micro_batch_tokens", "gradient_checkpointing"}``
        with auto resolved;
        ``torch_threads``: CPU threads of each service that runs the model (None: every core; the
        rollout and the trainer take turns); ``devices``: how many devices the groups spread over, each
        with its own rollout and trainer service (``engine.loop.devices``)."""
        self.plans = {p.name: p for p in plans}
        self.model_path, self.run_dir, self.max_restarts, self.log = model_path, Path(run_dir), max_restarts, log
        self.training = training or {
            "device": "cpu",
            "dtype": "float32",
            "num_gpus": 0.0,
            "share_prompts": True,
            "micro_batch_tokens": 0,
            "gradient_checkpointing": False,
        }
        self.threads = torch_threads
        self.restarts = {p.name: 0 for p in plans}
        self.failed: list[str] = []
        self.checkpoint_step: int | None = None  # the last checkpoint whose files are complete
        self.pending_checkpoint: int | None = None  # the one being written
        self.pending_groups: dict[int, list[str]] = {}  # its groups, by device
        self.phases: dict[str, float] = {}  # seconds of each phase of the latest step (``time/<phase>_s``)
        self.service_events: list[dict] = []  # restarts of rollout services, reported with the step's events
        self.lost: dict[int, str] = {}  # devices whose services died during the step being played: their error
        self.backend, self.rollout_settings = backend, dict(rollout or {})
        loads = {p.name: p.grpo.prompts_per_step * p.grpo.group_size * p.grpo.max_completion_length for p in plans}
        shares = assign(loads, devices)
        self.pg = placement_group(devices, self.training["device"], placement_strategy) if devices > 1 else None
        self.devices = [Device(k, groups, k if self.pg else None) for k, groups in enumerate(shares)]
        self.device_of = {g: d for d in self.devices for g in d.groups}
        for d in self.devices:
            d.rollout = self._spawn_rollout(d)
        for d in self.devices:
            d.trainer = self._spawn_trainer(d)  # starts while the rollout engine starts
        self.games, self.game_prompts = build_games(plans)  # multi-agent games, played from here
        self.game_of = {g: name for name, episodes in self.games.items() for g in episodes.agents.values()}
        self.actors = {p.name: self._spawn(p) for p in plans}

    def _label(self, device: Device, service: str) -> str:
        """A service's name in events: ``rollout``/``trainer``, with the device's index when there are several."""
        return service if len(self.devices) == 1 else f"{service}:{device.index}"

    def _spawn(self, plan: GroupPlan):
        """The group's actor, in its device's bundle (on its node)."""
        import ray

        from groups.actor import GroupActor

        k = self.restarts[plan.name]
        return (
            ray.remote(num_cpus=0, max_restarts=0)(GroupActor)
            .options(
                name=actor_name(self.run_dir, plan.name) + (f"#{k}" if k else ""),
                namespace="lorapop",
                **in_bundle(self.pg, self.device_of[plan.name].bundle),
            )
            .remote(plan, self.model_path)
        )

    def _service_name(self, device: Device, service: str, restarts: int) -> str:
        """``lorapop-<service>:<run>`` (``@<device>`` when there are several, ``#<restart>`` after a restart)."""
        return (
            f"lorapop-{service}:{self.run_dir.name}"
            + (f"@{device.index}" if len(self.devices) > 1 else "")
            + (f"#{restarts}" if restarts else "")
        )

    def _spawn_rollout(self, device: Device):
        """The device's rollout service: its groups' adapters on one base (vLLM multi-LoRA, or the hf backend)."""
        import ray

        plans = [self.plans[g] for g in device.groups]
        adapters = {p.name: p.lora.model_dump() for p in plans}
        options = {
            "name": self._service_name(device, "rollout", device.rollout_restarts),
            "namespace": "lorapop",
            **in_bundle(self.pg, device.bundle),
        }
        if self.backend == "vllm":
            from engine.rollout.vllm import VLLMRollout, engine_defaults

            opts = dict(self.rollout_settings)
            batch = sum(p.grpo.prompts_per_step * p.grpo.group_size for p in plans)  # one step's requests
            opts.update(engine_defaults(batch, opts.pop("engine_kwargs", None)))  # further vllm.LLM arguments
            return (
                ray.remote(num_cpus=0, num_gpus=opts.pop("num_gpus", 0.4), max_restarts=0)(VLLMRollout)
                .options(**options)
                .remote(self.model_path, adapters, **opts)
            )
        from engine.rollout.hf import HFRollout

        return (
            ray.remote(num_cpus=0, max_restarts=0)(HFRollout)
            .options(**options)
            .remote(self.model_path, adapters, self.threads)
        )

    def _generate(self, step: int, requests: dict[str, list]) -> tuple[dict[str, list], dict[str, str]]:
        """One generate call per device for its groups' ``requests`` (all at once); returns (results by
        group, errors by group). A rollout service that died on a node that lives is restarted with its
        groups' current adapters and asked again (``restart`` event), up to ``max_restarts`` times: its
        sampling is seeded per request, so the step's completions are the ones it would have given. One
        whose node was lost loses its device (``self.lost``): its groups get errors."""
        import ray

        results: dict[str, list] = {}
        errors: dict[str, str] = {}
        asked = {d.index: [g for g in d.groups if g in requests] for d in self.devices if not d.lost}
        while asked:
            refs = {
                k: self.devices[k].rollout.generate.remote([requests[g] for g in gs]) for k, gs in asked.items() if gs
            }
            fault_point("rollout", step)
            again = {}
            for k, ref in refs.items():
                device = self.devices[k]
                try:
                    results.update(zip(asked[k], ray.get(ref)))
                    continue
                except ray.exceptions.RayActorError as e:
                    error = _error_text(e)
                if not node_alive(device.node):
                    self.lost.setdefault(k, f"rollout service: {error}")
                    errors.update({g: error for g in asked[k]})
                    continue
                if device.rollout_restarts >= self.max_restarts:
                    label = self._label(device, "rollout")
                    raise RuntimeError(f"the {label} service failed {device.rollout_restarts + 1} times; last: {error}")
                self._restart_rollout(device, step, error)
                again[k] = asked[k]
            asked = again
        return results, errors

    def _restart_rollout(self, device: Device, step: int, error: str) -> None:
        import ray

        device.rollout_restarts += 1
        label = self._label(device, "rollout")
        self.service_events.append(event_row(step, label, "restart", f"restart {device.rollout_restarts}: {error}"))
        self.log(f"restarting the {label} service (attempt {device.rollout_restarts}): {error}")
        _kill(device.rollout)
        device.rollout = self._spawn_rollout(device)
        ray.get(device.trainer.forget_publish_target.remote())  # the new service has its own adapter directory
        ray.get(device.trainer.publish.remote(device.rollout, self._live_on(device)))

    def _spawn_trainer(self, device: Device):
        import ray

        from engine.trainer.service import TrainerService

        t = self.training
        gpus = t["num_gpus"] if t["device"] == "cuda" else 0
        trainer = (
            ray.remote(num_cpus=0, num_gpus=gpus, max_restarts=0)(TrainerService)
            .options(
                name=self._service_name(device, "trainer", device.trainer_restarts),
                namespace="lorapop",
                **in_bundle(self.pg, device.bundle),
            )
            .remote(
                self.model_path,
                self._slot_specs(device.groups),
                t["device"],
                t["dtype"],
                self.threads,
                t["share_prompts"],
                t["micro_batch_tokens"] or None,
                t.get("gradient_checkpointing", False),
            )
        )
        device.node = None  # asked once it is up (start, recovery)
        return trainer

    def _slot_specs(self, groups: list[str]) -> dict:
        from engine.trainer.service import SlotSpec
        from engine.trainer.slots import SlotHParams

        return {
            g: SlotSpec(p.lora.model_dump(), p.seed, SlotHParams.from_grpo(p.grpo))
            for g in groups
            for p in [self.plans[g]]
        }

    @property
    def live(self) -> list[str]:
        return [g for g in self.plans if g not in self.failed]

    def _live_on(self, device: Device) -> list[str]:
        return [g for g in self.live if self.device_of[g] is device]

    def _by_device(self, groups) -> dict[int, list[str]]:
        """``groups`` by the index of the device that serves them."""
        out: dict[int, list[str]] = {}
        for g in groups:
            out.setdefault(self.device_of[g].index, []).append(g)
        return out

    def start(self, checkpoint_step: int | None) -> list[dict]:
        """Publish every group's adapter (version 0, or a checkpoint's state); returns start-up events."""
        import ray

        reports = ray.get([self.actors[g].startup_report.remote() for g in self.live])
        events = [
            event_row(
                0,
                r["group"],
                "prompts_dropped",
                f"{r['dropped_prompts']} rows dropped: prompt longer than max_prompt_length (never truncated)",
                value=float(r["dropped_prompts"]),
            )
            for r in reports
            if r["dropped_prompts"]
        ]
        # how each model-running process computes (CPU kernels and threads differ between hosts)
        for d in self.devices:
            events += [
                event_row(0, self._label(d, name), "runtime", ray.get(actor.runtime.remote()))
                for name, actor in (("rollout", d.rollout), ("trainer", d.trainer))
            ]
            d.node = ray.get(d.trainer.node_id.remote())
        if len(self.devices) > 1:  # where each group runs
            nodes = ray.get([self.actors[g].node_id.remote() for g in self.live])
            events += [
                event_row(0, g, "placement", f"device {self.device_of[g].index} on node {node}")
                for g, node in zip(self.live, nodes)
            ]
        self.checkpoint_step = checkpoint_step
        self._restore(self.live)
        return events

    # --- one step: every group's episodes, turn by turn ------------------------------------------

    def step(self, step: int) -> tuple[list[StepOutput], list[dict]]:
        """Every live group's GRPO step; returns (their outputs, events). Each round of turns of all groups
        (single-turn, multi-turn and game agents alike) is one generate call per device."""
        events: list[dict] = []
        groups = self.live
        self.phases, self.lost = {}, {}
        t0 = time.perf_counter()
        outs, failed = self._play(step, groups, set(groups))
        waiting = [g for g in groups if g not in outs and g not in failed]  # partners of a failed game agent
        # a device whose trainer died or whose node was lost: its groups start again from the checkpoint
        for k, error in self._down(failed).items():
            moved = self._live_on(self.devices[k])
            partners = [p for p in waiting if p not in moved and any(p in self._partners(g) for g in moved)]
            outs.update(self._recover_device(self.devices[k], step, error, events, partners))
            failed = {g: e for g, e in failed.items() if g not in moved}
        for g, error in failed.items():
            partners = [p for p in waiting if p in self._partners(g)]
            outs.update(self._recover(g, step, error, events, partners))
        events += self.service_events
        self.service_events = []
        self.phases["step"] = time.perf_counter() - t0
        return [outs[g] for g in groups if g in outs], events

    def _down(self, failed: dict[str, str]) -> dict[int, str]:
        """Devices whose services died during the step (``self.lost``), and devices of failed groups whose
        node is gone or whose services no longer answer: their error by device index."""
        import ray

        down = dict(self.lost)
        for d in self.devices:
            if d.lost or d.index in down or not any(self.device_of[g] is d for g in failed):
                continue
            if not node_alive(d.node):
                down[d.index] = f"node {d.node} lost"
                continue
            try:
                ray.get([d.trainer.node_id.remote(), d.rollout.adapter_versions.remote()])
            except ray.exceptions.RayActorError as e:
                down[d.index] = _error_text(e)
        return down

    def _timed(self, phase: str, fn: Callable, *args):
        """``fn(*args)``, its seconds added to ``self.phases[phase]``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t0

    def _partners(self, group: str) -> list[str]:
        game = self.game_of.get(group)
        return [g for g in self.games[game].agents.values() if g != group] if game else []

    def _play(
        self, step: int, groups: list[str], learners: set[str], evaluation: dict | None = None
    ) -> tuple[dict, dict]:
        """One step of ``groups``, top to bottom: their episodes (rollout phase), then ``learners`` score,
        learn in one fused update, publish and record; or, with ``evaluation`` (``{"n", "temperature",
        "samples"}``), held-out episodes scored without learning. Returns (outputs by group, errors by group)."""

        # 1. rollout phase: every group's episodes, one generate call per round of turns
        solo, games, failed = self._rollouts(step, groups, evaluation)
        if evaluation:
            return self._evaluate(step, solo, games, learners, failed)
        # 2. score: each learning group scores its completions, computes advantages, packs its batch
        refs = {g: self.actors[g].prepare.remote(step) for g in solo if g in learners and g not in failed}
        refs.update(
            {
                g: self.actors[g].prepare.remote(step, *o)
                for g, o in self._game_outcomes(games, learners, failed).items()
            }
        )
        jobs, errors = self._timed("prepare", self._gather, refs)
        failed = {**failed, **errors}
        if not jobs:
            return {}, failed
        # 3. learn: one fused trainer call per device with its groups' batches (each slot its own optimizer step)
        by_device = self._by_device(jobs)
        t0 = time.perf_counter()
        trained = self._on_devices(
            {k: self.devices[k].trainer.train.remote([jobs[g] for g in gs]) for k, gs in by_device.items()},
            "trainer service",
            failed,
        )
        results = {g: r for k, rs in trained.items() for g, r in zip(by_device[k], rs)}
        train_s = time.perf_counter() - t0
        # 4. publish: every updated adapter to its device's rollout service, in one call per device
        seconds = self._on_devices(
            {
                k: self.devices[k].trainer.publish.remote(
                    self.devices[k].rollout, [g for g in gs if not results[g].skipped]
                )
                for k, gs in self._by_device(results).items()
            },
            "publish",
            failed,
        )
        results = {g: r for g, r in results.items() if self.device_of[g].index not in self.lost}
        publish_s = max(seconds.values(), default=0.0)
        self.phases.update(train=train_s, publish=publish_s)
        # 5. record: each group's metrics row and samples
        outs, errors = self._timed(
            "finish",
            self._gather,
            {g: self.actors[g].finish.remote(step, r, train_s, publish_s) for g, r in results.items()},
        )
        return outs, {**failed, **errors}

    def _on_devices(self, refs: dict[int, Any], what: str, failed: dict) -> dict[int, Any]:
        """The results of one call per device (``refs``), by device index; a device whose service died is
        lost (``self.lost``), left out, and its groups go into ``failed``."""
        import ray

        out: dict = {}
        for k, ref in refs.items():
            try:
                value = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if isinstance(e, ray.exceptions.RayTaskError) and not isinstance(e.cause, ray.exceptions.RayActorError):
                    raise  # a bug in the service, not a death
                self.lost.setdefault(k, f"{what}: {_error_text(e)}")
                failed.update({g: self.lost[k] for g in self.devices[k].groups if g in self.live})
                continue
            out[k] = value
        return out

    def _rollouts(
        self, step: int, groups: list[str], evaluation: dict | None
    ) -> tuple[list[str], set[str], dict[str, str]]:
        """The rollout phase of ``step`` (or of a held-out evaluation) for ``groups``: single-turn,
        multi-turn and game agents alike, each round of turns one generate call, until every episode is
        over. Returns (solo groups, games played, errors by group)."""
        solo = [g for g in groups if g not in self.game_of]
        games = {self.game_of[g] for g in groups if g in self.game_of}

        # start: rows and first requests (a game's agents get the game's rows, and their turns from it)
        def start(g: str, rows: list[dict] | None = None):
            actor = self.actors[g]
            if evaluation:
                return actor.begin_eval.remote(
                    evaluation["n"], evaluation["temperature"], evaluation["samples"], rows=rows
                )
            return actor.begin.remote(step, rows=rows)

        refs = {g: start(g) for g in solo}
        for name in sorted(games):
            rows = self._reset_game(name, step, evaluation)
            refs.update({g: start(g, rows) for g in self.games[name].agents.values()})
        started, failed = self._timed("begin", self._gather, refs)
        pending = {g: r for g, r in started.items() if r is not None}
        answering: list[str] = []  # groups whose own (multi-turn) env answers their last replies
        # rounds of turns: one generate call each, until every episode is over
        while True:
            # the env answers the model: each game its agents (here), each multi-turn env its group
            refs = {g: self.actors[g].answer.remote() for g in answering}
            for name in sorted(games):
                if any(g in failed for g in self.games[name].agents.values()):
                    continue  # an agent died: this game's step is redone on recovery
                for g, observations in self.games[name].observations().items():
                    refs[g] = self.actors[g].turn.remote(observations)
            asked, errors = self._timed("observe", self._gather, refs)
            pending.update({g: r for g, r in asked.items() if r is not None})
            failed.update(errors)
            if not pending:
                break
            # the model: one generate call for every pending request of every group
            results, errors = self._timed("generate", self._generate, step, pending)
            failed.update(errors)
            observed, errors = self._timed(
                "observe", self._gather, {g: self.actors[g].observe.remote(r) for g, r in results.items()}
            )
            failed.update(errors)
            pending, answering = {}, [g for g, o in observed.items() if o.answers]
            for g, o in observed.items():
                if g in self.game_of:
                    self.games[self.game_of[g]].record(g, o.replies)
        return solo, games, failed

    def _game_outcomes(self, games: set[str], learners: set[str], failed: dict) -> dict[str, tuple]:
        """``(rewards, success)`` per learning game agent, from the games its agents finished."""
        out = {}
        for name in sorted(games):
            episodes = self.games[name]
            if any(g in failed for g in episodes.agents.values()):
                continue  # an agent died: this game's step is redone on recovery
            rewards, success = episodes.rewards(), episodes.success()
            out.update({g: (rewards[g], success) for g in episodes.agents.values() if g in learners})
        return out

    def _evaluate(self, step: int, solo: list[str], games: set[str], learners: set[str], failed: dict):
        """Score the held-out episodes just played (no learning); one row per episode."""
        refs = {g: self.actors[g].evaluate.remote(step) for g in solo if g in learners and g not in failed}
        refs.update(
            {
                g: self.actors[g].evaluate.remote(step, *o)
                for g, o in self._game_outcomes(games, learners, failed).items()
            }
        )
        outs, errors = self._gather(refs)
        return outs, {**failed, **errors}

    def _reset_game(self, name: str, step: int, evaluation: dict | None) -> list[dict]:
        """Reset a game's episodes for ``step`` (or its held-out evaluation); returns its rows."""
        episodes = self.games[name]
        if evaluation:
            n = 1 if evaluation["temperature"] == 0 else evaluation["samples"]
            return episodes.reset(episodes.game.eval_rows(evaluation["n"]), n)
        return episodes.reset(episodes.game.batch(step, self.game_prompts[name]))

    def _gather(self, refs: dict) -> tuple[dict, dict]:
        """Results by group, and the errors of groups whose actor died or raised."""
        import ray

        ok, failed = {}, {}
        for g, ref in refs.items():
            try:
                ok[g] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                failed[g] = _error_text(e)
        return ok, failed

    def _recover(self, group: str, step: int, error: str, events: list[dict], partners: list[str]) -> dict:
        """Restart ``group`` from the last checkpoint and redo its steps, up to ``max_restarts`` times.
        ``partners`` (game agents whose game broke with it) learn the redone ``step`` too.
        Returns the outputs of ``step`` by group."""
        import ray

        self.checkpoint_written()  # the trainer lives: the checkpoint it is writing is the one to start from
        while True:
            if self.restarts[group] >= self.max_restarts:
                for g in [group] + self._partners(group):
                    self.failed.append(g)
                    reason = error if g == group else f"game partner {group} failed"
                    events.append(event_row(step, g, "failed", f"gave up after {self.restarts[g]} restarts: {reason}"))
                    self.log(f"group {g} failed: {reason}")
                    ray.kill(self.actors[g], no_restart=True)
                return {}
            self.restarts[group] += 1
            events.append(
                event_row(
                    step,
                    group,
                    "restart",
                    f"restart {self.restarts[group]} from checkpoint step {self.checkpoint_step or 0}: {error}",
                )
            )
            self.log(f"restarting group {group} (attempt {self.restarts[group]}): {error}")
            _kill(self.actors[group])
            self.actors[group] = self._spawn(self.plans[group])
            try:
                self._restore([group])
                return self._replay([group], step, partners)
            except _ReplayError as e:
                error = str(e)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                error = _error_text(e)

    def _restore(self, groups: list[str]) -> None:
        """``groups``' slots (and hyper-parameters) as of the last checkpoint, or as at the start; published."""
        import ray

        d = None if self.checkpoint_step is None else str(checkpoint_dir(self.run_dir, self.checkpoint_step))
        by_device = self._by_device(groups)
        hps: dict = {}
        for part in ray.get([self.devices[k].trainer.load_checkpoint.remote(d, gs) for k, gs in by_device.items()]):
            hps.update(part)
        calls = []
        for g, hp in hps.items():
            hp = dict(hp or {})
            used = hp.pop(ROWS_USED, None)  # (None: from the start, or a checkpoint written before it was kept)
            calls.append(self.actors[g].set_rows_used.remote(used, self.checkpoint_step or 0))
            if hp:
                calls.append(self.actors[g].set_hparams.remote(**hp))
        ray.get(calls)
        ray.get([self.devices[k].trainer.publish.remote(self.devices[k].rollout, gs) for k, gs in by_device.items()])

    def _recover_device(self, device: Device, step: int, error: str, events: list[dict], partners: list[str]) -> dict:
        """Start ``device``'s groups again from the last checkpoint and redo the steps after it (they all
        learn), up to ``max_restarts`` times: on a new trainer (and rollout service, if it died too) where
        its node lives, else on the device left with the fewest groups (``lost`` event, a ``restart``
        event per group). Returns ``step``'s outputs of its groups (and of ``partners``)."""

        self.checkpoint_written()  # a dead trainer's checkpoint counts if every file of it made it
        groups = self._live_on(device)
        while True:
            if node_alive(device.node):
                self._restart_trainer(device, step, error, events)
            else:
                device = self._move(device, step, error, events)
            try:
                self._restore(groups)
                return self._replay(groups, step, partners)
            except _ReplayError as e:
                if device.index not in self.lost:
                    raise RuntimeError(
                        f"groups failed while the steps of device {device.index} were redone: {e}"
                    ) from None
                error = self.lost.pop(device.index)

    def _restart_trainer(self, device: Device, step: int, error: str, events: list[dict]) -> None:
        """A new trainer for ``device`` (and rollout service, and group actors, where those died too)."""
        import ray

        label = self._label(device, "trainer")
        if device.trainer_restarts >= self.max_restarts:
            raise RuntimeError(f"the {label} service failed {device.trainer_restarts + 1} times; last: {error}")
        device.trainer_restarts += 1
        events.append(
            event_row(
                step,
                label,
                "restart",
                f"restart {device.trainer_restarts} from checkpoint step {self.checkpoint_step or 0}: {error}",
            )
        )
        self.log(f"restarting the {label} service (attempt {device.trainer_restarts}): {error}")
        _kill(device.trainer)
        device.trainer = self._spawn_trainer(device)
        try:
            ray.get(device.rollout.adapter_versions.remote())
        except ray.exceptions.RayActorError:
            device.rollout_restarts += 1
            _kill(device.rollout)
            device.rollout = self._spawn_rollout(device)
        device.node = ray.get(device.trainer.node_id.remote())
        for g in self._live_on(device):
            try:
                ray.get(self.actors[g].hparams.remote())
            except ray.exceptions.RayActorError:
                self.restarts[g] += 1
                self.actors[g] = self._spawn(self.plans[g])

    def _move(self, device: Device, step: int, error: str, events: list[dict]) -> Device:
        """``device``'s node is gone: its groups move to the live device with the fewest groups (slots added
        to its trainer, adapters to its rollout service, new actors in its bundle). Returns that device."""
        import ray

        left = [d for d in self.devices if d is not device and not d.lost and node_alive(d.node)]
        if not left:
            raise RuntimeError(f"device {device.index} was lost ({error}) and no other device is left")
        target = min(left, key=lambda d: (len(d.groups), d.index))
        groups = self._live_on(device)
        device.lost, device.groups = True, []
        _kill(device.trainer)
        _kill(device.rollout)
        events.append(
            event_row(
                step,
                f"device:{device.index}",
                "lost",
                f"node {device.node} lost; groups {', '.join(groups)} move to device {target.index}"
                + ("" if "lost" in error else f" ({error})"),
            )
        )
        self.log(f"device {device.index} lost (node {device.node}): its groups move to device {target.index}")
        ray.get(target.trainer.add_slots.remote(self._slot_specs(groups)))
        ray.get(target.rollout.add_groups.remote({g: self.plans[g].lora.model_dump() for g in groups}))
        target.groups += groups
        for g in groups:
            self.device_of[g] = target
            self.restarts[g] += 1
            events.append(
                event_row(
                    step,
                    g,
                    "restart",
                    f"restart {self.restarts[g]} on device {target.index} from checkpoint step "
                    f"{self.checkpoint_step or 0}: device {device.index} lost",
                )
            )
            _kill(self.actors[g])
            self.actors[g] = self._spawn(self.plans[g])
        return target

    def _replay(self, groups: list[str], step: int, partners: list[str]) -> dict:
        """Steps after the checkpoint, then ``step`` itself: ``groups`` learn (their game partners play their
        part without learning, except ``partners``, who learn ``step``). Returns ``step``'s outputs."""
        players = list(dict.fromkeys(groups + [p for g in groups for p in self._partners(g)]))
        outs: dict = {}
        for s in range((self.checkpoint_step or 0) + 1, step + 1):
            self.lost = {}
            outs, errors = self._play(s, players, set(groups) | (set(partners) if s == step else set()))
            if errors or self.lost:
                raise _ReplayError("; ".join(f"{g}: {e}" for g, e in errors.items()) or str(self.lost))
        return outs

    # --- evaluation, checkpoints, rebalancing ------------------------------------------------------

    def evaluate(self, step: int, n: int, temperature: float, samples: int) -> list[dict]:
        """Held-out episodes of every live group (greedy, or fixed-seed sampling); one row per episode."""
        groups = self.live
        outs, errors = self._play(step, groups, set(groups), {"n": n, "temperature": temperature, "samples": samples})
        if errors:
            raise RuntimeError(f"evaluation failed: {errors}")
        return [row for g in groups for row in outs[g]]

    def save_checkpoints(self, step: int) -> None:
        """Start checkpointing every live group's slot (adapter, optimizer state, version) and
        hyper-parameters as of now; each device's trainer writes its groups' files while the next step
        runs. ``checkpoint_written`` says when they are complete."""
        import ray

        d = checkpoint_dir(self.run_dir, step)
        groups = self.live
        used = dict(zip(groups, ray.get([self.actors[g].rows_used.remote() for g in groups])))
        # a group's dataset position travels with its hyper-parameters (restored apart from them: _restore)
        hps = {g: {**hp, ROWS_USED: used[g]} for g, hp in self.hparams().items()}
        self.pending_groups = self._by_device(groups)
        d.mkdir(parents=True, exist_ok=True)  # (its coordinator state is committed into it, groups or none)
        ray.get(
            [
                self.devices[k].trainer.save_checkpoint.remote(str(d), {g: hps[g] for g in gs})
                for k, gs in self.pending_groups.items()
            ]
        )
        self.pending_checkpoint = step

    def checkpoint_written(self) -> None:
        """Wait for the checkpoint being written; once every device's files of it are complete it is
        ``checkpoint_step`` (recovery starts from it). A dead trainer's part counts if all its files made
        it (each is renamed into place whole)."""
        import ray

        step, self.pending_checkpoint = self.pending_checkpoint, None
        if step is None:
            return
        d = checkpoint_dir(self.run_dir, step)
        complete = True
        for k, groups in self.pending_groups.items():
            try:
                complete &= str(d) in ray.get(self.devices[k].trainer.wait_saved.remote())
            except ray.exceptions.RayActorError:
                complete &= all((d / f"{g}.pt").is_file() for g in groups)
        if complete:
            self.checkpoint_step = step

    def hparams(self) -> dict[str, dict]:
        import ray

        groups = self.live
        return dict(zip(groups, ray.get([self.actors[g].hparams.remote() for g in groups])))

    def apply(self, decision: Decision) -> None:
        """Carry out one decision: a weight + optimizer copy from the donor (inside one trainer, or from
        the donor's device to the group's), then its new hyper-parameters, and the copy published; or
        new hyper-parameters."""
        import ray

        if decision.action == "exploit_explore" and decision.donor is not None:
            src, dst = self.device_of[decision.donor], self.device_of[decision.group]
            if src is dst:
                ray.get(dst.trainer.copy_slot.remote(decision.donor, decision.group))
            else:
                ray.get(
                    dst.trainer.take_slot_state.remote(decision.group, src.trainer.slot_state.remote(decision.donor))
                )
            ray.get(self.actors[decision.group].set_hparams.remote(**decision.new[decision.group]))
            ray.get(dst.trainer.publish.remote(dst.rollout, [decision.group]))
        else:
            ray.get([self.actors[g].set_hparams.remote(**hp) for g, hp in decision.new.items()])

    def save_adapters(self) -> dict[str, str]:
        """Each live group's adapter in PEFT format under ``adapters/<group>``, written by its device's trainer."""
        import ray

        dirs: dict[str, str] = {}
        for part in ray.get(
            [
                self.devices[k].trainer.save_adapters.remote({g: str(self.run_dir / "adapters" / g) for g in gs})
                for k, gs in self._by_device(self.live).items()
            ]
        ):
            dirs.update(part)
        return {g: dirs[g] for g in self.live}
