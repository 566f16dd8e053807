"""The population on Ray: the rollout service, the trainer service, one actor per group, and what keeps
them going.

``Population`` owns the actors (Ray's supervisor pattern). The base is held once per service: the
rollout service generates for every group in one batch, the trainer service (one slot per group)
updates every group in one fused step and publishes every updated adapter in one call; group actors
hold no model. It restarts a group actor that died or raised from the last checkpoint (``restart``
event), and the trainer with all its slots likewise; a group that keeps failing is marked failed
(``failed`` event) while the others go on; it evaluates, checkpoints and applies rebalancing decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from engine.config.builders import GroupPlan, build_games
from engine.config.faults import fault_point
from engine.results.checkpoint import checkpoint_dir
from engine.results.tables import event_row
from groups.actor import StepOutput
from groups.rebalance import Decision

ROWS_USED = "rows_used"
"""Key of a group's dataset position (training rows consumed) in a checkpoint's hyper-parameters."""


class _ReplayError(RuntimeError):
    """A group (or a game partner) failed again while its steps were being redone."""


class _TrainerDied(RuntimeError):
    """The trainer service died (its process, not one group's update): restart it from the checkpoint."""


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
    ):
        """``rollout``: the vllm engine's settings (``RolloutConfig``); ``training``: the trainer's
        ``{"device", "dtype", "num_gpus", "share_prompts", "micro_batch_tokens", "gradient_checkpointing"}``
        with auto resolved;
        ``torch_threads``: CPU threads of each service that runs the model (None: every core; the
        rollout and the trainer take turns)."""
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
        self.trainer_restarts = 0
        self.failed: list[str] = []
        self.checkpoint_step: int | None = None  # the last checkpoint whose files are complete
        self.pending_checkpoint: int | None = None  # the one being written
        self.phases: dict[str, float] = {}  # seconds of each phase of the latest step (``time/<phase>_s``)
        self.rollout_events: list[dict] = []  # restarts of the rollout service, reported with the step's events
        self.backend, self.rollout_settings, self.rollout_restarts = backend, dict(rollout or {}), 0
        self.rollout = self._spawn_rollout()
        self.trainer = self._spawn_trainer()  # starts while the rollout engine starts
        self.games, self.game_prompts = build_games(plans)  # multi-agent games, played from here
        self.game_of = {g: name for name, episodes in self.games.items() for g in episodes.agents.values()}
        self.actors = {p.name: self._spawn(p) for p in plans}

    def _spawn(self, plan: GroupPlan):
        import ray

        from groups.actor import GroupActor

        k = self.restarts[plan.name]
        return (
            ray.remote(num_cpus=0, max_restarts=0)(GroupActor)
            .options(
                name=actor_name(self.run_dir, plan.name) + (f"#{k}" if k else ""),
                namespace="lorapop",
            )
            .remote(plan, self.model_path)
        )

    def _spawn_rollout(self):
        """The rollout service: every group's adapter on one base (vLLM multi-LoRA, or the hf backend)."""
        import ray

        adapters = {p.name: p.lora.model_dump() for p in self.plans.values()}
        name = f"lorapop-rollout:{self.run_dir.name}" + (f"#{self.rollout_restarts}" if self.rollout_restarts else "")
        if self.backend == "vllm":
            from engine.rollout.vllm import VLLMRollout, engine_defaults

            opts = dict(self.rollout_settings)
            batch = sum(p.grpo.prompts_per_step * p.grpo.group_size for p in self.plans.values())  # one step's requests
            opts.update(engine_defaults(batch, opts.pop("engine_kwargs", None)))  # further vllm.LLM arguments
            return (
                ray.remote(num_cpus=0, num_gpus=opts.pop("num_gpus", 0.4), max_restarts=0)(VLLMRollout)
                .options(name=name, namespace="lorapop")
                .remote(self.model_path, adapters, **opts)
            )
        from engine.rollout.hf import HFRollout

        return (
            ray.remote(num_cpus=0, max_restarts=0)(HFRollout)
            .options(name=name, namespace="lorapop")
            .remote(self.model_path, adapters, self.threads)
        )

    def _generate(self, step: int, requests: list) -> list:
        """One generate call for every group's requests; a rollout service that died is restarted with the
        groups' current adapters and asked again (``restart`` event), up to ``max_restarts`` times. Its
        sampling is seeded per request, so the step's completions are the ones it would have given."""
        import ray

        while True:
            ref = self.rollout.generate.remote(requests)
            fault_point("rollout", step)
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as e:
                error = _error_text(e)
            if self.rollout_restarts >= self.max_restarts:
                raise RuntimeError(f"the rollout service failed {self.rollout_restarts + 1} times; last: {error}")
            self.rollout_restarts += 1
            self.rollout_events.append(
                event_row(step, "rollout", "restart", f"restart {self.rollout_restarts}: {error}")
            )
            self.log(f"restarting the rollout service (attempt {self.rollout_restarts}): {error}")
            _kill(self.rollout)
            self.rollout = self._spawn_rollout()
            ray.get(self.trainer.forget_publish_target.remote())  # the new service has its own adapter directory
            ray.get(self.trainer.publish.remote(self.rollout, self.live))

    def _spawn_trainer(self):
        import ray

        from engine.trainer.service import SlotSpec, TrainerService
        from engine.trainer.slots import SlotHParams

        t = self.training
        specs = {
            p.name: SlotSpec(p.lora.model_dump(), p.seed, SlotHParams.from_grpo(p.grpo)) for p in self.plans.values()
        }
        gpus = t["num_gpus"] if t["device"] == "cuda" else 0
        return (
            ray.remote(num_cpus=0, num_gpus=gpus, max_restarts=0)(TrainerService)
            .options(
                name=f"lorapop-trainer:{self.run_dir.name}"
                + (f"#{self.trainer_restarts}" if self.trainer_restarts else ""),
                namespace="lorapop",
            )
            .remote(
                self.model_path,
                specs,
                t["device"],
                t["dtype"],
                self.threads,
                t["share_prompts"],
                t["micro_batch_tokens"] or None,
                t.get("gradient_checkpointing", False),
            )
        )

    @property
    def live(self) -> list[str]:
        return [g for g in self.plans if g not in self.failed]

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
        events += [
            event_row(0, name, "runtime", ray.get(actor.runtime.remote()))
            for name, actor in (("rollout", self.rollout), ("trainer", self.trainer))
        ]
        self.checkpoint_step = checkpoint_step
        self._restore(self.live)
        return events

    # --- one step: every group's episodes, turn by turn ------------------------------------------

    def step(self, step: int) -> tuple[list[StepOutput], list[dict]]:
        """Every live group's GRPO step; returns (their outputs, events). Each round of turns of all groups
        (single-turn, multi-turn and game agents alike) is one generate call."""
        events: list[dict] = []
        groups = self.live
        self.phases = {}
        t0 = time.perf_counter()
        try:
            outs, failed = self._play(step, groups, set(groups))
        except _TrainerDied as e:
            outs, failed = self._recover_trainer(step, str(e), events), {}
        waiting = [g for g in groups if g not in outs and g not in failed]  # partners of a failed game agent
        for g, error in failed.items():
            partners = [p for p in waiting if p in self._partners(g)]
            outs.update(self._recover(g, step, error, events, partners))
        events += self.rollout_events
        self.rollout_events = []
        self.phases["step"] = time.perf_counter() - t0
        return [outs[g] for g in groups if g in outs], events

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
        import ray

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
        names = list(jobs)
        t0 = time.perf_counter()
        try:
            # 3. learn: one fused trainer call with every group's batch (each slot its own optimizer step)
            results = ray.get(self.trainer.train.remote([jobs[g] for g in names]))
            train_s = time.perf_counter() - t0
            # 4. publish: every updated adapter to the rollout service, in one call
            publish_s = ray.get(self.trainer.publish.remote(self.rollout, [r.slot for r in results if not r.skipped]))
        except ray.exceptions.RayActorError as e:
            raise _TrainerDied(_error_text(e)) from None
        self.phases.update(train=train_s, publish=publish_s)
        # 5. record: each group's metrics row and samples
        outs, errors = self._timed(
            "finish",
            self._gather,
            {g: self.actors[g].finish.remote(step, r, train_s, publish_s) for g, r in zip(names, results)},
        )
        return outs, {**failed, **errors}

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
            names = list(pending)
            results = self._timed("generate", self._generate, step, [pending[g] for g in names])
            observed, errors = self._timed(
                "observe", self._gather, {g: self.actors[g].observe.remote(r) for g, r in zip(names, results)}
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
                return self._replay(group, step, partners)
            except _ReplayError as e:
                error = str(e)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                error = _error_text(e)

    def _restore(self, groups: list[str]) -> None:
        """``groups``' slots (and hyper-parameters) as of the last checkpoint, or as at the start; published."""
        import ray

        d = None if self.checkpoint_step is None else str(checkpoint_dir(self.run_dir, self.checkpoint_step))
        hps = ray.get(self.trainer.load_checkpoint.remote(d, groups))
        calls = []
        for g, hp in hps.items():
            hp = dict(hp or {})
            used = hp.pop(ROWS_USED, None)  # (None: from the start, or a checkpoint written before it was kept)
            calls.append(self.actors[g].set_rows_used.remote(used, self.checkpoint_step or 0))
            if hp:
                calls.append(self.actors[g].set_hparams.remote(**hp))
        ray.get(calls)
        ray.get(self.trainer.publish.remote(self.rollout, groups))

    def _recover_trainer(self, step: int, error: str, events: list[dict]) -> dict:
        """Restart the trainer service with every live group's slot from the last checkpoint, and redo the
        steps after it (all groups learn); up to ``max_restarts`` times. Returns ``step``'s outputs."""
        # the checkpoint the dead trainer was writing counts if every file of it made it (each is renamed
        # into place whole)
        pending, self.pending_checkpoint = self.pending_checkpoint, None
        if pending is not None and all(
            (checkpoint_dir(self.run_dir, pending) / f"{g}.pt").is_file() for g in self.live
        ):
            self.checkpoint_step = pending
        while True:
            if self.trainer_restarts >= self.max_restarts:
                raise RuntimeError(f"the trainer service failed {self.trainer_restarts + 1} times; last: {error}")
            self.trainer_restarts += 1
            events.append(
                event_row(
                    step,
                    "trainer",
                    "restart",
                    f"restart {self.trainer_restarts} from checkpoint step {self.checkpoint_step or 0}: {error}",
                )
            )
            self.log(f"restarting the trainer service (attempt {self.trainer_restarts}): {error}")
            _kill(self.trainer)
            self.trainer = self._spawn_trainer()
            groups = self.live
            try:
                self._restore(groups)
                outs: dict = {}
                for s in range((self.checkpoint_step or 0) + 1, step + 1):
                    outs, errors = self._play(s, groups, set(groups))
                    if errors:
                        raise RuntimeError(f"groups failed while the trainer's steps were redone: {errors}")
                return outs
            except _TrainerDied as e:
                error = str(e)

    def _replay(self, group: str, step: int, partners: list[str]) -> dict:
        """Steps after the checkpoint, then ``step`` itself: ``group`` learns (its game partners play their
        part without learning, except ``partners``, who learn ``step``). Returns ``step``'s outputs."""
        players = [group] + self._partners(group)
        outs: dict = {}
        for s in range((self.checkpoint_step or 0) + 1, step + 1):
            outs, errors = self._play(s, players, {group} | (set(partners) if s == step else set()))
            if errors:
                raise _ReplayError("; ".join(f"{g}: {e}" for g, e in errors.items()))
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
        hyper-parameters as of now; the trainer writes the files while the next step runs.
        ``checkpoint_written`` says when they are complete."""
        import ray

        d = checkpoint_dir(self.run_dir, step)
        groups = self.live
        used = dict(zip(groups, ray.get([self.actors[g].rows_used.remote() for g in groups])))
        # a group's dataset position travels with its hyper-parameters (restored apart from them: _restore)
        hps = {g: {**hp, ROWS_USED: used[g]} for g, hp in self.hparams().items()}
        ray.get(self.trainer.save_checkpoint.remote(str(d), hps))
        self.pending_checkpoint = step

    def checkpoint_written(self) -> None:
        """Wait for the checkpoint being written; once its files are complete it is ``checkpoint_step``
        (recovery starts from it). One lost with a trainer that died is dropped."""
        import ray

        step, self.pending_checkpoint = self.pending_checkpoint, None
        if step is None:
            return
        try:
            written = ray.get(self.trainer.wait_saved.remote())
        except ray.exceptions.RayActorError:
            return  # the trainer died with it
        if str(checkpoint_dir(self.run_dir, step)) in written:
            self.checkpoint_step = step

    def hparams(self) -> dict[str, dict]:
        import ray

        groups = self.live
        return dict(zip(groups, ray.get([self.actors[g].hparams.remote() for g in groups])))

    def apply(self, decision: Decision) -> None:
        """Carry out one decision: a weight + optimizer copy from the donor inside the trainer (then its
        new hyper-parameters, and the copy published), or new hyper-parameters."""
        import ray

        if decision.action == "exploit_explore":
            ray.get(self.trainer.copy_slot.remote(decision.donor, decision.group))
            ray.get(self.actors[decision.group].set_hparams.remote(**decision.new[decision.group]))
            ray.get(self.trainer.publish.remote(self.rollout, [decision.group]))
        else:
            ray.get([self.actors[g].set_hparams.remote(**hp) for g, hp in decision.new.items()])

    def save_adapters(self) -> dict[str, str]:
        """Each live group's adapter in PEFT format under ``adapters/<group>``."""
        import ray

        dirs = {g: str(self.run_dir / "adapters" / g) for g in self.live}
        return ray.get(self.trainer.save_adapters.remote(dirs))
