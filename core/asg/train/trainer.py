"""The trainer: alternates U- and G-steps by the recipe's schedule, owns the optimisers and every
piece of state the loop carries, and writes the run directory (architecture.md "A run on disk").

    trainer = Trainer(backbone, recipe, ImagePool(folder, seed=recipe.seed), RunDir.create(out, ...))
    trainer.train()            # or trainer.resume(checkpoint) first

Determinism: every random choice is seeded from (recipe seed, rank, step, call) — generation calls get
their own seeds, the hint sampler its own ``random.Random`` — and the global RNGs are checkpointed,
so a resumed run reproduces the uninterrupted one exactly on the same hardware.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import torch

from asg.progress import progress_bar
from asg.rewards import DifficultyTarget, EasyThreshold, SteNormalizer, resolve_components
from asg.train.checkpoint import load_checkpoint, save_checkpoint
from asg.train.flat import merge_flat, optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state
from asg.train.gstep import generation_step
from asg.train.recipe import Recipe, phase_of
from asg.train.updater import RoleUpdater
from asg.train.ustep import understanding_step
from asg.updates import EMABaseline

MODEL_PREFIX = "model."


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
    def train(self, steps: int | None = None) -> None:
        """Run to ``steps`` global steps (default: the recipe's), checkpointing on the way and at the end."""
        total = steps or self.recipe.schedule.steps
        every = self.recipe.run.checkpoint_every
        start_time = time.time() - self.elapsed
        self._t_started = time.time()
        self._status("running", step=self.step, steps_total=total)
        try:
            with progress_bar(total=total, desc="asg train") as bar:
                bar.update(self.step)
                while self.step < total:
                    step = self.step + 1
                    record = self.train_step(step)
                    self.elapsed = time.time() - start_time
                    rate = (step - self.started_from) / max(time.time() - self._t_started, 1e-9)
                    bar.set(phase=record["phase"], **_running(record))
                    bar.update(1)
                    if every and step % every == 0 and step < total:
                        self.save()
                    self._status("running", step=step, phase=record["phase"], steps_total=total,
                                          steps_done=step, elapsed_sec=self.elapsed, steps_per_sec=rate,
                                          eta_sec=(total - step) / rate if rate > 0 else None)
        except BaseException as exc:
            self._status("failed", step=self.step, steps_total=total, last_error=f"{type(exc).__name__}: {exc}")
            raise
        path = self.save()
        sync = self._ranks_in_sync()
        self._status("completed", step=self.step, steps_total=total, steps_done=self.step,
                     elapsed_sec=self.elapsed, last_checkpoint=str(path), **sync)

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
            self.run.write_status(state, **fields)

    def train_step(self, step: int) -> dict[str, Any]:
        """One global step: its phase, image, rollouts and updates; appends the records."""
        t0 = time.time()
        phase = phase_of(step, self.recipe.schedule)
        path, image = self.pool.image_for(step, self.dist.rank, self.dist.world_size)
        images: list[Any] = []
        if phase == "U":
            metrics, rollout = understanding_step(self, image, step)
        else:
            metrics, rollout, images = generation_step(self, image, step)
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
                 "optimizers": optim_json, "rng": rng_j, "rank": self.dist.rank, "world_size": self.dist.world_size}
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.run.path, self.step, tensors=tensors, state=state,
                               keep_last=self.recipe.run.keep_checkpoints)

    def resume(self, where: Any) -> int:
        """Load a checkpoint (run dir, checkpoint dir or its state file); returns its step."""
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
        if self.dist.is_main:
            self.run.truncate_after(self.step)
        return self.step


def _running(record: dict[str, Any]) -> dict[str, float]:
    keys = ("solver.reward_mean", "proposer.reward", "h_sc", "generator.reward_mean")
    return {k.split(".")[0] if k != "h_sc" else "H_sc": float(record[k]) for k in keys if isinstance(record.get(k), (int, float))}
