"""The trainer: alternates U- and G-steps by the recipe's schedule, owns the optimisers and every
piece of state the loop carries, and writes the run directory (architecture.md "A run on disk").

    trainer = Trainer(backbone, recipe, ImagePool(folder, seed=recipe.seed), RunDir.create(out, ...))
    trainer.train()            # or trainer.resume(checkpoint) first

Determinism: every random choice is seeded from (recipe seed, rank, step, call) — generation calls get
their own seeds, the hint sampler its own ``random.Random`` — and the global RNGs are checkpointed,
so a resumed run reproduces the uninterrupted one exactly on the same hardware.

Faults (docs/training.md, "Faults and interruptions"): before the first step the run directory must be
writable with room for a checkpoint; SIGTERM or SIGINT stops the run after the step in progress with a
checkpoint and raises :class:`TrainingStopped` carrying the resume command (a second signal stops it at
once); a step whose sampling meets NaN/inf logits or latents (:class:`~asg.errors.NonFiniteError`) is
abandoned and its roles skip their updates; ``run.max_consecutive_skips`` steps in a row with non-finite
losses, gradients or model outputs stop it the same way, as "failed".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import signal
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import torch

from asg.errors import AsgError, NonFiniteError
from asg.progress import progress_bar
from asg.rewards import DifficultyTarget, EasyThreshold, SteNormalizer, resolve_components
from asg.train.checkpoint import (
    fault_point, latest_checkpoint, load_checkpoint, nonfinite_point, recover_interrupted_save, save_checkpoint,
)
from asg.train.flat import merge_flat, optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state
from asg.train.gstep import UPDATE_ORDER as G_UPDATE_ORDER, generation_step
from asg.train.recipe import Recipe, phase_of
from asg.train.run import RunWriteError, check_writable, disk_free, human_bytes
from asg.train.updater import RoleUpdater
from asg.train.ustep import UPDATE_ORDER as U_UPDATE_ORDER, solver_decisions, understanding_step
from asg.updates import NONFINITE_OUTPUT, EMABaseline

MODEL_PREFIX = "model."
# the skip codes (asg.updates.guards) run.max_consecutive_skips counts
NONFINITE = ("nonfinite_loss", "nonfinite_grad", NONFINITE_OUTPUT)


_MISSING = object()


def _leaf_changes(base: Any, mine: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf of ``mine`` that ``base`` lacks or holds differently."""
    if isinstance(mine, dict) and isinstance(base, dict):
        out: list[tuple[str, Any]] = []
        for k, v in mine.items():
            out += _leaf_changes(base.get(k, _MISSING), v, f"{prefix}{k}.")
        return out
    return [] if base == mine else [(prefix[:-1], mine)]


class TrainingStopped(AsgError):
    """The run stopped before its last step. ``exit_code``: 128 + the signal number for SIGINT/SIGTERM (130,
    143), 2 for too many non-finite steps. ``checkpoint``: the checkpoint to resume from (None when there is
    none); ``resume_command``: the ``asg train ... --resume`` command that continues the run; ``aborted``: a
    second signal stopped it mid-step, so nothing of that step was saved."""

    def __init__(self, message: str, *, exit_code: int, reason: str, checkpoint: Any = None,
                 resume_command: str | None = None, aborted: bool = False) -> None:
        super().__init__(message)
        self.exit_code, self.reason, self.checkpoint = exit_code, reason, checkpoint
        self.resume_command, self.aborted = resume_command, aborted


class _Abort(BaseException):
    """Raised by the signal handler on a second signal (a BaseException, so no ``except Exception`` in a
    step swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say(text: str) -> None:
    """Write to stderr from a signal handler (os.write: no re-entrant buffered I/O)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


class TrainState:
    """The loop's rolling state: easy-threshold, difficulty target, STE window, Solver baseline."""

    def __init__(self, recipe: Recipe) -> None:
        r = recipe.rewards
        self.threshold = EasyThreshold(r.difficulty)
        self.target = DifficultyTarget(r.difficulty)
        self.ste = SteNormalizer(r.ste)
        self.solver_baseline = EMABaseline.from_config(recipe.solver.reinforce)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in ("threshold", "target", "ste", "solver_baseline")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


class Trainer:
    """Runs a recipe on a backbone over an image pool, writing into a run directory."""

    def __init__(self, backbone: Any, recipe: Recipe, pool: Any, run: Any, *, dist: Any = None) -> None:
        from asg.train.dist import Dist

        self.backbone, self.recipe, self.pool, self.run = backbone, recipe, pool, run
        self.dist = dist or Dist()
        self.state = TrainState(recipe)
        self.step = 0
        self.started_from = 0  # the step this process began at (0, or the resumed checkpoint's)
        self._components: dict[str, list[Any]] = {}
        o = recipe.optim
        lrs = {"solver": recipe.solver, "proposer": recipe.proposer, "generator": recipe.generator}
        self.updaters: dict[str, RoleUpdater] = {
            role: RoleUpdater(role, backbone.trainable_parameters(role), lr=cfg.lr, weight_decay=o.weight_decay,
                              grad_clip=o.grad_clip, kl=recipe.kl, dist=self.dist)
            for role, cfg in lrs.items() if cfg.update and role in backbone.roles
        }
        self.elapsed = 0.0
        self.nonfinite_streak = 0  # consecutive steps with a non-finite loss, gradient or output (checkpointed)
        self._last_nonfinite = ""
        self._signal: int | None = None  # the first SIGINT/SIGTERM received during train()
        self._saved: tuple[int, Any] | None = None  # (step, path) of the last checkpoint this process wrote
        self._seed_global_rngs()

    def _seed_global_rngs(self) -> None:
        """The global RNGs (adapter dropout, anything not seeded per call) start from the recipe's
        seed and the rank, not from whatever ran before in this process; ``resume`` replaces them."""
        import random

        import numpy as np

        seed = self.seed_for(0, "global")
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- helpers used by the steps ----------------------------------------------------------------
    def seed_for(self, step: int, tag: str) -> int:
        """A stable seed for one call of one step on this rank (independent of call order elsewhere)."""
        return zlib.crc32(f"{self.recipe.seed}/{self.dist.rank}/{step}/{tag}".encode()) & 0x7FFFFFFF

    def components(self, role: str) -> list[Any]:
        if role not in self._components:
            self._components[role] = resolve_components(role, self.recipe.rewards.components)
        return self._components[role]

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, steps: int | None = None, *, handle_signals: bool = True) -> None:
        """Run to ``steps`` global steps (default: the recipe's), checkpointing on the way and at the end.

        With ``handle_signals`` (and on the main thread) SIGINT and SIGTERM stop the run after the step in
        progress, with a checkpoint, by raising :class:`TrainingStopped`; a second signal raises it at once.
        ``run.max_consecutive_skips`` non-finite steps in a row raise it too (state "failed")."""
        total = steps or self.recipe.schedule.steps
        every = self.recipe.run.checkpoint_every
        start_time = time.time() - self.elapsed
        self._t_started = time.time()
        with self._signals(handle_signals):
            try:
                self._preflight_all_ranks()
                self._status("running", step=self.step, steps_total=total, **self._streak())
                with progress_bar(total=total, desc="asg train") as bar:
                    bar.update(self.step)
                    while self.step < total:
                        step = self.step + 1
                        record = self.train_step(step)
                        fault_point(f"step:{step}")
                        self._count_nonfinite(record)
                        self.elapsed = time.time() - start_time
                        rate = (step - self.started_from) / max(time.time() - self._t_started, 1e-9)
                        bar.set(phase=record["phase"], **_running(record))
                        bar.update(1)
                        saved = self.save() if every and step % every == 0 and step < total else None
                        self._status("running", step=step, phase=record["phase"], steps_total=total,
                                     steps_done=step, elapsed_sec=self.elapsed, steps_per_sec=rate,
                                     eta_sec=(total - step) / rate if rate > 0 else None, last_checkpoint=saved,
                                     **self._streak())
                        self._stop_if_asked(step, total)
                path = self.save()
            except TrainingStopped:
                raise  # its status is written
            except _Abort as abort:
                raise self._aborted(abort.signum, total) from None
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                # Ctrl-C where no handler is installed: interrupted, resumable from the last checkpoint
                state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                self._safe_status(state, step=self.step, steps_total=total, last_error=error, reason=error,
                                  **self._streak())
                raise
        sync = self._ranks_in_sync()
        self._status("completed", step=self.step, steps_total=total, steps_done=self.step,
                     elapsed_sec=self.elapsed, last_checkpoint=str(path), **sync, **self._streak())

    # -- faults ------------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> int:
        """About how large one checkpoint is: the trainable tensors, AdamW's two moments of every trained
        parameter (in its dtype) and 1 MiB for the RNG states and the JSON."""
        weights = sum(t.numel() * t.element_size() for t in self.backbone.trainable_state_dict().values())
        moments = sum(2 * p.numel() * p.element_size() for u in self.updaters.values() for p in u.params)
        return weights + moments + (1 << 20)

    def preflight(self) -> None:
        """Before the first step: ``checkpoints/`` must be writable (a probe file is written and removed) and its
        disk must hold one checkpoint (else a RunWriteError with the numbers); room for fewer than
        ``run.keep_checkpoints`` + 1 (kept ones + the one being written) is a RuntimeWarning."""
        if self.run is None:
            return
        folder = self.run.checkpoints_dir
        check_writable(folder)
        need, free = self.checkpoint_bytes(), disk_free(folder)
        if free is None:
            return
        keep = self.recipe.run.keep_checkpoints
        if free < need:
            raise RunWriteError(f"not enough free space for a checkpoint in {folder}: {human_bytes(free)} free, one "
                                f"checkpoint needs about {human_bytes(need)} (trainable weights and their optimiser "
                                "state); free space, or choose another --out", errno.ENOSPC, folder)
        if free < need * (keep + 1):
            warnings.warn(f"{folder}: {human_bytes(free)} free, but run.keep_checkpoints = {keep} kept checkpoints plus "
                          f"the one being written need about {human_bytes(need * (keep + 1))}; the run fails when the "
                          "disk fills (free space, or lower run.keep_checkpoints)", RuntimeWarning, stacklevel=3)

    def _preflight_all_ranks(self) -> None:
        error: RunWriteError | None = None
        if self.dist.is_main:
            try:
                self.preflight()
            except RunWriteError as exc:
                error = exc
        if self.dist.any(error is not None):  # every rank stops, not only the one that checked
            raise error or RunWriteError("rank 0 cannot write the run directory (its error says why)")

    def resume_command(self) -> str:
        """The command that continues this run: this process's ``asg train`` arguments with ``--out``/``--resume``
        replaced by ``--resume RUN_DIR``; outside the CLI, one built from the pool, recipe name and run dir."""
        run_dir = str(self.run.path) if self.run is not None else "RUN_DIR"
        argv = sys.argv[1:]
        if argv[:1] == ["train"]:
            kept: list[str] = []
            skip = False
            for arg in argv[1:]:
                if skip:
                    skip = False
                elif arg in ("--out", "--resume"):
                    skip = True
                elif not arg.startswith(("--out=", "--resume=")):
                    kept.append(arg)
            return shlex.join(["asg", "train", *kept, "--resume", run_dir])
        folder = getattr(self.pool, "folder", None)
        backbone = str(getattr(self.backbone, "name", "") or "tiny")
        return shlex.join(["asg", "train", "--backbone", backbone, "--images", str(folder or "IMAGES"),
                           *self._recipe_args(), "--resume", run_dir])

    def _recipe_args(self) -> list[str]:
        """``--recipe NAME --set ...`` that rebuild this run's recipe (the fields where it differs from the
        registered one); when that cannot rebuild it (a recipe file, a removed component), the recipe is
        written whole to ``recipe.json`` in the run directory and ``--recipe`` names that file."""
        from asg.train.recipe import load_recipe

        mine = self.recipe.to_dict()
        try:
            base = load_recipe(self.recipe.name).to_dict()
            sets = [f"{k}={json.dumps(v)}" for k, v in _leaf_changes(base, mine)]
            if load_recipe(self.recipe.name, sets).to_dict() == mine:
                return ["--recipe", self.recipe.name, *[x for item in sets for x in ("--set", item)]]
        except AsgError:
            pass
        if self.run is None:
            return ["--recipe", "RECIPE.json"]
        path = self.run.path / "recipe.json"
        path.write_text(json.dumps(mine, indent=1) + "\n")
        return ["--recipe", str(path)]

    def _streak(self) -> dict[str, int]:
        return {"nonfinite_streak": self.nonfinite_streak}

    def _count_nonfinite(self, record: dict[str, Any]) -> None:
        """A step where some role's update was skipped as non-finite extends the streak; one where a role
        stepped (and none was non-finite) ends it; a step without update attempts leaves it."""
        bad = [f"{k[: -len('.skip_reason')]} {v}" for k, v in record.items()
               if k.endswith(".skip_reason") and v in NONFINITE]
        if bad:
            self.nonfinite_streak += 1
            self._last_nonfinite = f"step {record['step']}: {', '.join(bad)}"
        elif any(record.get(f"{role}.stepped") is True for role in self.updaters):
            self.nonfinite_streak = 0

    def _stop_if_asked(self, step: int, total: int) -> None:
        """After a step: stop with a checkpoint on a signal (not after the last step: that one completes) or
        when the non-finite streak reached ``run.max_consecutive_skips``; every rank decides alike."""
        limit = self.recipe.run.max_consecutive_skips
        signalled = self._signal is not None and step < total
        failing = bool(limit) and self.nonfinite_streak >= limit
        if self.dist.world_size > 1:
            signalled, failing = self.dist.any(signalled), self.dist.any(failing)
        if not (signalled or failing):
            return
        path = self._saved[1] if self._saved is not None and self._saved[0] == self.step else self.save()
        command = self.resume_command()
        if failing:
            reason = (f"{self.nonfinite_streak} consecutive steps had non-finite losses, gradients or model outputs (last: "
                      f"{self._last_nonfinite}); run.max_consecutive_skips = {limit}")
            message = (f"stopped after step {step}: {reason}. Their updates were skipped, so no weight is non-finite; "
                       f"checkpoint {path}. Lower the learning rates (--set solver.lr=...) or train in float32, "
                       f"then resume with:\n  {command}")
            state, code = "failed", 2
        else:
            signum = self._signal or signal.SIGTERM
            reason = f"{_signal_name(signum)} received; stopped after step {step} of {total}"
            message = f"interrupted: {reason}; checkpoint {path}. Resume with:\n  {command}"
            state, code = "interrupted", 128 + signum
        self._status(state, step=self.step, steps_total=total, last_checkpoint=path,
                     last_error=reason if failing else None, reason=reason, resume_command=command, **self._streak())
        raise TrainingStopped(message, exit_code=code, reason=reason, checkpoint=path, resume_command=command)

    def _aborted(self, signum: int, total: int) -> TrainingStopped:
        """A second signal: record it and say where to resume from (the last complete checkpoint)."""
        name = _signal_name(signum)
        reason = f"aborted by a second {name} during step {self.step + 1}; nothing of that step was saved"
        latest = latest_checkpoint(self.run.path) if self.run is not None and self.dist.is_main else None
        command = self.resume_command() if latest is not None else None
        where = (f"resume from {latest} with:\n  {command}" if command
                 else "no checkpoint was written yet: start the run again (with a new --out)")
        self._safe_status("interrupted", step=self.step, steps_total=total, reason=reason, resume_command=command,
                          last_checkpoint=latest, **self._streak())
        return TrainingStopped(f"{reason}; {where}", exit_code=128 + signum, reason=reason, checkpoint=latest,
                               resume_command=command, aborted=True)

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        """SIGINT/SIGTERM handlers for the duration of train() (main thread only): the first sets a flag the
        loop reads after each step, the second raises at once; the previous handlers come back afterwards."""
        self._signal = None
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        signums = [signal.SIGINT, signal.SIGTERM]
        previous = {s: signal.getsignal(s) for s in signums}

        def restore() -> None:
            for s in signums:
                signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)

        def handler(signum: int, frame: Any) -> None:
            name = _signal_name(signum)
            if self._signal is None:
                self._signal = signum
                _say(f"\nasg train: received {name}: stopping after the step in progress, with a checkpoint "
                     f"(send {name} again to stop at once, without one)\n")
                return
            restore()  # a third signal gets the default behaviour
            raise _Abort(signum)

        for s in signums:
            signal.signal(s, handler)
        try:
            yield
        finally:
            restore()

    def _ranks_in_sync(self) -> dict[str, Any]:
        """With several ranks: whether every rank ended with bit-identical trainable weights (a hash
        of each rank's tensors, gathered). Divergence would mean a missed collective; it is reported
        in status.json and warned about, never silently kept."""
        if self.dist.world_size == 1:
            return {}
        import hashlib
        import warnings

        h = hashlib.sha256()
        for name, t in sorted(self.backbone.trainable_state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digests = self.dist.gather_objects(h.hexdigest())
        in_sync = len(set(digests)) == 1
        if not in_sync:
            warnings.warn(f"ranks ended with different trainable weights (hashes {digests}); "
                          "only rank 0's checkpoint was saved", RuntimeWarning, stacklevel=2)
        return {"ranks_in_sync": in_sync}

    def _status(self, state: str, **fields: Any) -> None:
        if self.dist.is_main:  # only rank 0 writes the run directory
            skipped = getattr(self.pool, "skipped", None)
            if skipped is not None:  # unreadable pool files: how many, and the first ones with the reason
                fields.setdefault("images_skipped", skipped)
                fields.setdefault("skipped_images", getattr(self.pool, "unreadable", {}) if skipped else {})
            self.run.write_status(state, **fields)

    def _safe_status(self, state: str, **fields: Any) -> None:
        """A status write on the way out: a failure to write it (the disk is full) must not hide the error."""
        try:
            self._status(state, **fields)
        except OSError as exc:
            _say(f"asg train: could not update status.json: {exc}\n")

    def train_step(self, step: int) -> dict[str, Any]:
        """One global step: its phase, image, rollouts and updates; appends the records."""
        t0 = time.time()
        phase = phase_of(step, self.recipe.schedule)
        path, image = self.pool.image_for(step, self.dist.rank, self.dist.world_size)
        images: list[Any] = []
        decisions = self._decisions()
        try:
            nonfinite_point(step, self.dist.rank)  # tests only (ASG_FAULT_INJECT); inert unset
            if phase == "U":
                metrics, rollout = understanding_step(self, image, step)
            else:
                metrics, rollout, images = generation_step(self, image, step)
        except NonFiniteError as exc:
            metrics, rollout = self._abandon_step(phase, exc, decisions), {"nonfinite_output": str(exc)}
        self._sync_scalars()
        record = {"step": step, "phase": phase, "image": str(path), "step_time_sec": time.time() - t0,
                  **{f"{r}.beta": u.beta for r, u in self.updaters.items()},
                  "solver.baseline": self.state.solver_baseline.value, **metrics}
        self.step = step
        if self.dist.is_main:
            self.run.append_metrics(record)
            self.run.append_rollouts([{"step": step, "phase": phase, "image": str(path), **rollout}])
            every = self.recipe.run.sample_every
            if images and every and step % every == 0:
                self.run.save_images(step, images, [f"cand_{i}_r{r:.3f}" for i, r in enumerate(rollout.get("rewards", []))])
        return record

    def _decisions(self) -> dict[str, int]:
        """How many update decisions (steps and skips) each role has taken so far."""
        return {r: u.decisions for r, u in self.updaters.items()}

    def _abandon_step(self, phase: str, exc: NonFiniteError, before: dict[str, int]) -> dict[str, Any]:
        """A model output of this step was NaN/inf (:class:`NonFiniteError`): the step stops where it was.
        Each role of the phase skips the update decisions it had not yet taken as ``nonfinite_output``
        (its weights untouched; with several ranks each skip still joins the gradient all-reduce), and the
        step counts towards ``run.max_consecutive_skips``. A role takes one decision per step, the Solver
        of a U-step one more per ``solver.scene_vote_extra_images``."""
        # in the step's own order: with several ranks each skip pairs with the other ranks' update all-reduce
        roles = U_UPDATE_ORDER if phase == "U" else G_UPDATE_ORDER
        metrics: dict[str, Any] = {"nonfinite_output": 1}
        for role in roles:
            upd = self.updaters.get(role)
            if upd is None:
                continue  # disabled
            due = solver_decisions(self.recipe) if (phase == "U" and role == "solver") else 1
            # decisions taken before the failure keep their effect (their record is lost with the step's)
            for _ in range(due - (upd.decisions - before.get(role, 0))):
                upd.skip(NONFINITE_OUTPUT).record_into(metrics, role)
        warnings.warn(f"step {self.step + 1}: {exc}; the step is skipped", stacklevel=2)
        return metrics

    def _sync_scalars(self) -> None:
        """Baselines and β are averaged across ranks after every step (§3.1, §5.1)."""
        if self.dist.world_size == 1:
            return
        b = self.state.solver_baseline
        b.value = self.dist.mean(b.value)
        for u in self.updaters.values():
            u.kl.value = self.dist.mean(u.kl.value)

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self) -> Any:
        """Write a complete checkpoint of the current step (weights, optimisers, state, RNG)."""
        tensors = {MODEL_PREFIX + k: v.detach().cpu() for k, v in self.backbone.trainable_state_dict().items()}
        optim_json: dict[str, Any] = {}
        for role, u in self.updaters.items():
            t, j = optimizer_to_flat(u.optimizer.state_dict(), f"optim.{role}.")
            tensors = merge_flat(tensors, t)
            optim_json[role] = j
        rng_t, rng_j = rng_state()
        tensors = merge_flat(tensors, rng_t)
        state = {"step": self.step, "elapsed_sec": self.elapsed, "recipe": self.recipe.name,
                 "train_state": self.state.state_dict(), "updaters": {r: u.state_dict() for r, u in self.updaters.items()},
                 "optimizers": optim_json, "rng": rng_j, "rank": self.dist.rank, "world_size": self.dist.world_size,
                 "nonfinite_streak": self.nonfinite_streak}
        if not self.dist.is_main:
            self._saved = (self.step, None)
            return None
        path = save_checkpoint(self.run.path, self.step, tensors=tensors, state=state,
                               keep_last=self.recipe.run.keep_checkpoints)
        self._saved = (self.step, path)
        return path

    def resume(self, where: Any) -> int:
        """Load a checkpoint (run dir, checkpoint dir or its state file); returns its step. What a crash left
        in this run's ``checkpoints/`` (a partial save) is tidied first."""
        if self.run is not None and self.dist.is_main:
            recover_interrupted_save(self.run.path)
        self.dist.barrier()
        step, tensors, state = load_checkpoint(where)
        model = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
        self.backbone.load_trainable_state_dict(model)
        for role, u in self.updaters.items():
            if role not in state["optimizers"]:
                raise ValueError(f"checkpoint {where} has no optimiser state for role {role!r} "
                                 f"(it trained {sorted(state['optimizers'])}); resume with the recipe it was written by")
            u.optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizers"][role], f"optim.{role}."))
            u.load_state_dict(state["updaters"][role])
        self.state.load_state_dict(state["train_state"])
        set_rng_state(tensors, state["rng"])
        self.step = int(step)
        self.started_from = self.step
        self.elapsed = float(state.get("elapsed_sec", 0.0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        if self.dist.is_main:
            self.run.truncate_after(self.step)
        return self.step


def _running(record: dict[str, Any]) -> dict[str, float]:
    keys = ("solver.reward_mean", "proposer.reward", "h_sc", "generator.reward_mean")
    return {k.split(".")[0] if k != "h_sc" else "H_sc": float(record[k]) for k in keys if isinstance(record.get(k), (int, float))}
