"""Faults during a training run: kill -9 anywhere (inside a checkpoint write too), SIGTERM and SIGINT,
non-finite losses and gradients, a full disk or an unwritable run directory, unreadable images.

The subprocess tests run the real ``asg train`` on the tiny backbone (one CPU thread each, so every
process computes the same floats) and compare the final trainable weights of a run that was killed
and resumed with those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asg.backbones.tiny.model import TinyBackbone
from asg.shapes import write_unlabeled_folder
from asg.train import checkpoint as ckpt_mod
from asg.train import run as run_mod
from asg.train.checkpoint import (
    SAVE_OK, latest_checkpoint, list_checkpoints, load_checkpoint, recover_interrupted_save, save_checkpoint,
)
from asg.train.data import ImagePool
from asg.train.recipe import load_recipe
from asg.train.run import RunDir, RunWriteError, read_jsonl
from asg.train.trainer import MODEL_PREFIX, Trainer, TrainingStopped

STEPS = 4
# permissive gates (every role updates), short generations, U and G alternating, a checkpoint every step
SETS = ["run.checkpoint_every=1", "run.keep_checkpoints=1", "run.sample_every=0", "generator.spec_attempts=1",
        "generator.min_spec_quality=0.0", "generator.min_qa=1", "rewards.solver.easy_skip_majority=1.0",
        "rewards.solver.iqr_skip_majority=1.0", "rewards.solver.skip_uninformative=false",
        "proposer.ask.max_new_tokens=96", "solver.questions_per_step=1", "schedule.understanding=1",
        "schedule.generation=1"]
TIME_KEYS = ("step_time_sec",)
posix = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faults_pool") / "images"
    write_unlabeled_folder(folder, n=8, seed=5, split="pool")
    return folder


def _cmd(pool: Path, out: Path, *, resume: bool = False) -> list[str]:
    where = ["--resume", str(out)] if resume else ["--out", str(out)]
    return [sys.executable, "-m", "asg", "train", "--backbone", "tiny", "--images", str(pool), "--recipe", "demo",
            "--steps", str(STEPS), *where, *[x for s in SETS for x in ("--set", s)]]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ASG_PROGRESS": "0", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ASG_FAULT_INJECT", None)
    if fault:
        env["ASG_FAULT_INJECT"] = fault
    return env


def _run(cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(fault), capture_output=True, text=True, timeout=600)


def _start(cmd: list[str], stderr: Path) -> subprocess.Popen[bytes]:
    with open(stderr, "wb") as err:
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    loaded = load_checkpoint(run / "checkpoints" / f"step_{step:06d}")
    return {k: v for k, v in loaded.tensors.items() if k.startswith(MODEL_PREFIX)}


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in read_jsonl(run / "metrics.jsonl").records]


def _steps_logged(run: Path) -> int:
    try:
        return len(read_jsonl(run / "metrics.jsonl").records)
    except Exception:  # noqa: BLE001  (a line being written)
        return 0


def _wait_for(cond: object, proc: subprocess.Popen[bytes], timeout: float = 300, allow_exit: bool = False) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            assert allow_exit, f"the run ended (rc {proc.returncode}) before the fault could be injected"
            return
        assert time.monotonic() < end, "timed out waiting for the run"
        time.sleep(0.02)


def _same_as_reference(run: Path, reference: Path) -> None:
    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} trainable tensors differ, e.g. {differ[:3]}"
    assert _metrics(run) == _metrics(reference)
    assert json.loads((run / "status.json").read_text())["state"] == "completed"


def _intact(run: Path) -> Path:
    """The checkpoint a resume would use is complete and loads; every step_* directory is complete."""
    latest = latest_checkpoint(run)
    assert latest is not None and (latest / SAVE_OK).is_file()
    for c in list_checkpoints(run):
        assert c.complete, f"{c.path} lacks {SAVE_OK}"
        load_checkpoint(c.path)
    return latest


@pytest.fixture(scope="module")
def reference(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of STEPS steps."""
    out = tmp_path_factory.mktemp("faults_ref") / "run"
    proc = _run(_cmd(pool, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    initial = TinyBackbone.load().trainable_state_dict()
    moved = [k for k, v in _weights(out).items() if not torch.equal(v, initial[k[len(MODEL_PREFIX):]])]
    assert moved, "training changed no trainable tensor: the comparisons would be vacuous"
    return out


# -- kill -9, SIGTERM, SIGINT ------------------------------------------------------------------------------
@posix
def test_sigkill_at_fault_points_then_resume_is_bit_exact(pool: Path, reference: Path, tmp_path: Path) -> None:
    """One run killed (SIGKILL via ASG_FAULT_INJECT) inside four checkpoint writes and resumed after each: every
    time the checkpoint to resume from is complete and older ones were only rotated once a newer one was, and
    the final weights and metrics equal the uninterrupted run's bit for bit."""
    out = tmp_path / "run"
    chain = [  # (fault point, the step a resume starts from afterwards, the directories under checkpoints/)
        ("save:after_tensors@2", 1, ["step_000001", "step_000002.tmp"]),
        ("save:before_rotate@2", 2, ["step_000001", "step_000002"]),  # the new one is complete, the old one kept
        ("save:during_rotate@3", 3, ["step_000001.deleting", "step_000002", "step_000003"]),
        ("save:before_rename@4", 3, ["step_000002", "step_000003", "step_000004.tmp"]),  # the resume tidied
    ]
    for i, (fault, resume_step, on_disk) in enumerate(chain):
        proc = _run(_cmd(pool, out, resume=i > 0), fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode, proc.stderr[-2000:])
        assert f"at {fault}" in proc.stderr, proc.stderr[-2000:]
        names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
        assert names == on_disk, (fault, names)
        assert load_checkpoint(_intact(out)).step == resume_step, fault
    proc = _run(_cmd(pool, out, resume=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_as_reference(out, reference)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.txt", f"step_{STEPS:06d}"]


def _resume_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("asg train ") and "--resume" in ln]
    assert lines, stderr[-3000:]
    return lines[-1]


@posix
def test_sigterm_then_kill_9_at_a_random_moment_then_resume_is_bit_exact(pool: Path, reference: Path,
                                                                         tmp_path: Path) -> None:
    """SIGTERM: the step in progress finishes, a checkpoint of it is written, status.json says "interrupted"
    with the exact resume command (also on stderr), exit 143. That command continues the run; a `kill -9` from
    outside at a random moment stops it again; a resume completes it with the uninterrupted run's weights."""
    out = tmp_path / "run"
    proc = _start(_cmd(pool, out), tmp_path / "stderr1")
    _wait_for(lambda: _steps_logged(out) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 128 + signal.SIGTERM
    stderr = (tmp_path / "stderr1").read_text()
    assert "received SIGTERM" in stderr and "interrupted: SIGTERM received" in stderr, stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["reason"], status
    step = status["step"]
    assert 1 <= step < STEPS and status["last_checkpoint"] == str(out / "checkpoints" / f"step_{step:06d}")
    assert load_checkpoint(out).step == step and len(_metrics(out)) == step
    command = _resume_line(stderr)
    assert status["resume_command"] == command
    argv = shlex.split(command)
    assert argv[:2] == ["asg", "train"] and argv[argv.index("--resume") + 1] == str(out) and "--out" not in argv
    assert argv[argv.index("--steps") + 1] == str(STEPS) and argv.count("--set") == len(SETS)

    delay = random.Random().uniform(0.0, 2.0)
    proc = _start([sys.executable, "-m", "asg", *argv[1:]], tmp_path / "stderr2")
    _wait_for(lambda: _steps_logged(out) > step, proc)
    time.sleep(delay)
    proc.kill()
    assert proc.wait(60) in (-signal.SIGKILL, 0), delay  # 0: it finished within the delay
    _intact(out)
    resumed = _run(_cmd(pool, out, resume=True))
    assert resumed.returncode == 0, (delay, resumed.stderr[-3000:])
    _same_as_reference(out, reference)


@posix
def test_second_sigint_aborts_at_once(pool: Path, tmp_path: Path) -> None:
    """SIGINT, then SIGINT again before the step ends: no waiting for the step, exit 130, status "interrupted"
    naming the abort, the checkpoint a resume would use and the command."""
    for attempt in range(3):  # the first signal may, rarely, land just as a step ends: then the stop is graceful
        out, err = tmp_path / f"run{attempt}", tmp_path / f"stderr{attempt}"
        proc = _start(_cmd(pool, out), err)
        _wait_for(lambda out=out: (out / "checkpoints" / "step_000001" / SAVE_OK).is_file(), proc)
        time.sleep(0.2)  # into step 2
        proc.send_signal(signal.SIGINT)
        _wait_for(lambda err=err: "received SIGINT" in err.read_text(), proc, timeout=60, allow_exit=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
        stderr = err.read_text()
        if "aborted" in stderr:
            break
        assert "interrupted: SIGINT received" in stderr, stderr[-3000:]
    assert "aborted by a second SIGINT" in stderr, stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "second SIGINT" in status["reason"], status
    assert "--resume" in status["resume_command"] and status["last_checkpoint"] == str(_intact(out))


# -- in-process runs ------------------------------------------------------------------------------------
U_ONLY = [*SETS, "schedule.understanding=1", "schedule.generation=0", "generator.update=false"]


def _trainer(pool: Path, out: Path, steps: int, overrides: list[str] = U_ONLY) -> Trainer:
    recipe = load_recipe("demo", [*overrides, f"schedule.steps={steps}"])
    backbone = TinyBackbone.load()
    run = RunDir.create(out, config={"recipe": recipe.to_dict()}, resume=False)
    return Trainer(backbone, recipe, ImagePool(pool, seed=recipe.seed, image_size=backbone.image_size), run)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(pool: Path, tmp_path: Path) -> None:
    """NaN gradients (step 1) and NaN logits/losses (steps 3, 4) leave every weight untouched and are counted;
    a clean step in between resets the streak; run.max_consecutive_skips = 2 consecutive ones stop the run
    with a checkpoint and status.json "failed" saying why."""
    tr = _trainer(pool, tmp_path / "run", 6, [*U_ONLY, "run.max_consecutive_skips=2", "run.checkpoint_every=0"])
    mode = {"grad": False, "logits": False}
    nan = float("nan")
    for u in tr.updaters.values():
        for p in u.params:
            p.register_hook(lambda g: torch.full_like(g, nan) if mode["grad"] else g)
    score = tr.backbone.score

    def nan_score(*args: object, **kwargs: object) -> object:
        out = score(*args, **kwargs)
        if mode["logits"] and kwargs.get("grad"):
            import attrs

            out = attrs.evolve(out, logprobs=out.logprobs * nan,
                               logits=None if out.logits is None else out.logits * nan)
        return out
    tr.backbone.score = nan_score  # type: ignore[method-assign]
    step_fn = tr.train_step
    seen: dict[int, tuple[dict, bool]] = {}

    def watched(step: int) -> dict:
        mode["grad"], mode["logits"] = step == 1, step in (3, 4)
        before = tr.backbone.trainable_state_dict()
        record = step_fn(step)
        after = tr.backbone.trainable_state_dict()
        seen[step] = (record, all(torch.equal(before[k], after[k]) for k in before))
        return record
    tr.train_step = watched  # type: ignore[method-assign]
    with pytest.raises(TrainingStopped, match="2 consecutive steps .*non-finite") as err:
        tr.train()
    assert err.value.exit_code == 2 and tr.step == 4
    assert seen[1][0]["proposer.skip_reason"] == "nonfinite_grad" and seen[1][1]
    assert seen[2][0]["proposer.stepped"] and not seen[2][1]  # a clean step: weights moved, streak reset
    for s in (3, 4):
        assert seen[s][0]["proposer.skip_reason"] == "nonfinite_loss" and seen[s][1], s
    skips = tr.updaters["proposer"].skips
    assert (skips.get("nonfinite_grad"), skips.get("nonfinite_loss")) == (1, 2), skips
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "max_consecutive_skips" in status["reason"], status
    assert status["metrics"]["nonfinite_streak"] == 2
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.step == 4 and loaded.state["nonfinite_streak"] == 2
    assert load_recipe("demo").run.max_consecutive_skips == 20


def test_nonfinite_sampling_skips_the_step_and_counts(pool: Path, tmp_path: Path) -> None:
    """NaN logits while sampling text (U-step 1) and NaN latents while generating images (G-step 2) abandon
    the step: no weight moves, the phase's roles skip with ``nonfinite_output``, the streak grows; the clean
    U-step 3 updates and resets it, and the run completes (its limit, 3, is never reached)."""
    tr = _trainer(pool, tmp_path / "run", 3, [*SETS, "run.max_consecutive_skips=3", "run.checkpoint_every=0"])
    assert set(tr.updaters) == {"proposer", "solver", "generator"}
    mode = {"logits": False, "latents": False}
    nan = float("nan")
    net = tr.backbone.net
    # generation runs without gradients; the updates' scoring (with gradients) is left alone
    net["vlm"].get_output_embeddings().register_forward_hook(
        lambda m, i, out: out * nan if mode["logits"] and not torch.is_grad_enabled() else out)
    net["gen"].register_forward_hook(lambda m, i, out: out * nan if mode["latents"] and not torch.is_grad_enabled() else out)
    step_fn = tr.train_step
    seen: dict[int, tuple[dict, bool, int]] = {}

    def watched(step: int) -> dict:
        mode["logits"], mode["latents"] = step == 1, step == 2
        streak = tr.nonfinite_streak
        before = tr.backbone.trainable_state_dict()
        with pytest.warns(UserWarning, match="non-finite") if step < 3 else contextlib.nullcontext():
            record = step_fn(step)
        after = tr.backbone.trainable_state_dict()
        seen[step] = (record, all(torch.equal(before[k], after[k]) for k in before), streak)
        return record
    tr.train_step = watched  # type: ignore[method-assign]
    tr.train()
    r1, r2, r3 = (seen[s][0] for s in (1, 2, 3))
    assert r1["phase"] == "U" and r2["phase"] == "G" and r3["phase"] == "U"
    for role in ("proposer", "solver"):
        assert (r1[f"{role}.stepped"], r1[f"{role}.skip_reason"]) == (False, "nonfinite_output"), r1
    assert (r2["generator.stepped"], r2["generator.skip_reason"]) == (False, "nonfinite_output"), r2
    assert r1["nonfinite_output"] == 1 and r2["nonfinite_output"] == 1 and "nonfinite_output" not in r3
    assert seen[1][1] and seen[2][1], "a skipped step changed weights"
    assert r3["proposer.stepped"] and not seen[3][1]
    # the streak before steps 1, 2, 3 (the loop counts it after each step), and after step 3
    assert [seen[s][2] for s in (1, 2, 3)] == [0, 1, 2] and tr.nonfinite_streak == 0
    assert tr.updaters["solver"].skips.get("nonfinite_output") == 1
    assert tr.updaters["generator"].skips.get("nonfinite_output") == 1
    rollouts = read_jsonl(tmp_path / "run" / "rollouts.jsonl").records
    assert "logits of generated token" in rollouts[0]["nonfinite_output"]
    assert "generated latents" in rollouts[1]["nonfinite_output"]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "completed"



def test_abandoned_u_step_skips_every_solver_decision_it_owes(pool: Path, tmp_path: Path) -> None:
    """With solver.scene_vote_extra_images = 2 a U-step owes the Solver 3 update decisions (with several
    ranks, each joins a gradient all-reduce): an abandoned step skips all 3, or the 2 left when one was
    taken before the failure; the Proposer owes 1 and a G-step's Generator 1."""
    from asg.errors import NonFiniteError

    tr = _trainer(pool, tmp_path / "run", 2, [*SETS, "solver.scene_vote_questions=4",
                                              "solver.scene_vote_extra_images=2"])
    solver, proposer, generator = (tr.updaters[r] for r in ("solver", "proposer", "generator"))
    fault = NonFiniteError("logits hold 1 non-finite value(s) (NaN)")
    with pytest.warns(UserWarning, match="non-finite"):
        m = tr._abandon_step("U", fault, tr._decisions())
    assert (solver.skips.get("nonfinite_output"), proposer.skips.get("nonfinite_output")) == (3, 1)
    assert m["solver.skip_reason"] == "nonfinite_output" and m["nonfinite_output"] == 1
    before = tr._decisions()
    solver.skip("scene_vote:no_labels")  # one decision taken before the failure
    with pytest.warns(UserWarning, match="non-finite"):
        tr._abandon_step("U", fault, before)
    assert (solver.skips["nonfinite_output"], proposer.skips["nonfinite_output"]) == (5, 2)
    with pytest.warns(UserWarning, match="non-finite"):
        tr._abandon_step("G", fault, tr._decisions())
    assert (solver.skips["nonfinite_output"], generator.skips.get("nonfinite_output")) == (5, 1)
    assert solver.steps == proposer.steps == generator.steps == 0

def test_fault_point_fires_only_where_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASG_FAULT_INJECT lists points (optionally @STEP); fault_point SIGKILLs only there, and is inert unset."""
    kills: list[int] = []

    class Killed(Exception):
        pass

    def kill(pid: int, sig: int) -> None:
        kills.append(sig)
        raise Killed  # instead of dying
    monkeypatch.setattr(ckpt_mod.os, "kill", kill)
    monkeypatch.delenv(ckpt_mod.FAULT_ENV, raising=False)
    ckpt_mod.fault_point("step:5")
    ckpt_mod.fault_point("save:before_rename", 4)
    monkeypatch.setenv(ckpt_mod.FAULT_ENV, "save:before_rename@4, step:5")
    ckpt_mod.fault_point("save:before_rename", 2)
    ckpt_mod.fault_point("save:after_tensors", 4)
    ckpt_mod.fault_point("step:4")
    assert kills == []
    for args in (("save:before_rename", 4), ("step:5",)):
        with pytest.raises(Killed):
            ckpt_mod.fault_point(*args)
    assert kills == [signal.SIGKILL] * 2


def test_crash_while_resaving_a_step_is_recovered(tmp_path: Path) -> None:
    """A crash after the old step_4 was moved aside (step_000004.replaced) and before the new one was renamed in:
    latest_checkpoint still finds step 4, and the tidying a resume does puts it back and drops the .tmp."""
    save_checkpoint(tmp_path, 3, tensors={"w": torch.full((1,), 3.0)}, state={}, keep_last=None)
    step4 = save_checkpoint(tmp_path, 4, tensors={"w": torch.full((1,), 4.0)}, state={}, keep_last=None)
    step4.rename(step4.with_name("step_000004.replaced"))
    (step4.parent / "step_000004.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == step4.with_name("step_000004.replaced")
    assert load_checkpoint(tmp_path).tensors["w"].tolist() == [4.0]
    recover_interrupted_save(tmp_path)
    assert sorted(p.name for p in step4.parent.iterdir()) == ["latest.txt", "step_000003", "step_000004"]
    assert latest_checkpoint(tmp_path) == step4


def _enospc(target: str, monkeypatch: pytest.MonkeyPatch, when: str = "") -> None:
    real = getattr(ckpt_mod, target)

    def full(*args: object) -> None:
        path = next(a for a in args if isinstance(a, Path))
        if when not in str(path):
            return real(*args)
        path.write_bytes(b"partial")  # what a real full disk leaves: part of the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt_mod, target, full)


@pytest.mark.parametrize("target", ["_write_tensors", "_write_text"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                target: str) -> None:
    """ENOSPC while writing the tensors or the state: the error names the file and the intact checkpoint, the
    partial step_*.tmp is removed, and the previous checkpoint still loads."""
    save_checkpoint(tmp_path, 1, tensors={"w": torch.ones(2)}, state={"a": 1}, keep_last=1)
    _enospc(target, monkeypatch)
    with pytest.raises(RunWriteError) as err:
        save_checkpoint(tmp_path, 2, tensors={"w": torch.zeros(2)}, state={"a": 2}, keep_last=1)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    text = str(err.value)
    assert str(tmp_path / "checkpoints" / "step_000002.tmp") in text and "step_000001" in text, text
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.txt", "step_000001"]
    assert load_checkpoint(tmp_path).tensors["w"].tolist() == [1.0, 1.0]


def test_disk_full_during_training_fails_the_run_with_the_path(pool: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that hits a full disk ends the run: status.json "failed" names the path, the last checkpoint stays."""
    tr = _trainer(pool, tmp_path / "run", 2, [*U_ONLY, "run.checkpoint_every=1"])
    _enospc("_write_tensors", monkeypatch, when="step_000002")
    with pytest.raises(RunWriteError, match="step_000002.tmp"):
        tr.train()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "step_000002.tmp" in status["last_error"], status
    assert "No space left" in status["last_error"] and status["last_checkpoint"].endswith("step_000001")
    assert load_checkpoint(tmp_path / "run").step == 1


def test_preflight_refuses_a_full_disk_and_an_unwritable_directory(pool: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the first step: too little free space for one checkpoint is refused with the numbers, room for
    fewer than keep_checkpoints + 1 is a warning, an unwritable directory is refused by name."""
    tr = _trainer(pool, tmp_path / "run", 1)
    need = tr.checkpoint_bytes()
    assert need > sum(t.numel() * t.element_size() for t in tr.backbone.trainable_state_dict().values())
    usage = type("usage", (), {})

    def free(n: int) -> None:
        u = usage()
        u.total, u.used, u.free = 10 * need, 0, n
        monkeypatch.setattr(run_mod.shutil, "disk_usage", lambda path: u)
    free(need // 2)
    with pytest.raises(RunWriteError, match="free") as err:
        tr.train()
    assert str(tr.run.checkpoints_dir) in str(err.value) and err.value.errno == errno.ENOSPC
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert json.loads(tr.run.status_path.read_text())["state"] == "failed"
    free(need + 1)
    with pytest.warns(RuntimeWarning, match="keep_checkpoints"):
        tr.preflight()
    monkeypatch.undo()

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(run_mod.tempfile, "mkstemp", denied)
    with pytest.raises(RunWriteError, match="not writable") as err:
        tr.preflight()
    assert str(tr.run.checkpoints_dir) in str(err.value)
    # a run directory that cannot be created at all (under a file: refused even for root)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunWriteError, match=re.escape(str(tmp_path / "afile" / "run"))):
        RunDir.create(tmp_path / "afile" / "run", config={}, resume=False)


def test_status_lists_skipped_images(tmp_path: Path) -> None:
    """status.json records how many pool files were unreadable and which (the first 20, with the reason)."""
    folder = tmp_path / "images"
    write_unlabeled_folder(folder, n=2, seed=1, split="pool")
    for i in range(22):
        (folder / f"broken_{i:02d}.png").write_bytes(b"not a png")
    tr = _trainer(folder, tmp_path / "run", 1)
    with pytest.warns(Warning):
        for s in range(1, len(tr.pool) + 1):
            tr.pool.image_for(s)
    assert tr.pool.skipped == 22
    tr.train()
    status = json.loads(tr.run.status_path.read_text())
    assert status["images_skipped"] == 22 and len(status["skipped_images"]) == 20
    first = status["skipped_images"][0]
    assert first["path"].startswith(str(folder)) and "broken_" in first["path"] and first["reason"]


def test_check_finite_names_what_and_rows() -> None:
    """check_finite passes finite values (and -inf when allowed), and names the tensor, count, kinds, rows."""
    from asg.errors import NonFiniteError
    from asg.updates.guards import check_finite

    inf = float("inf")
    check_finite(torch.tensor([[0.0, -inf]]), "logits", allow_neg_inf=True)
    with pytest.raises(NonFiniteError, match=r"^logits hold 1 non-finite value\(s\) \(-inf\) in row\(s\) 0 of 1$"):
        check_finite(torch.tensor([[0.0, -inf]]), "logits")
    x = torch.zeros(3, 4)
    x[1, 2], x[2, 0], x[2, 1] = float("nan"), inf, float("nan")
    with pytest.raises(NonFiniteError, match=r"logits hold 3 non-finite value\(s\) \(NaN/\+inf\) in row\(s\) 1, 2 of 3"):
        check_finite(x, "logits", allow_neg_inf=True)


def test_a_plugins_sampler_refusing_nan_probabilities_is_a_nonfinite_output() -> None:
    """torch.multinomial's error on NaN probabilities inside a guarded primitive becomes NonFiniteError
    (the trainer skips the step), while other plugin errors stay BackboneError."""
    from asg.errors import BackboneError, NonFiniteError
    from asg.plugins import guard_backbone

    class Sampler:
        def generate_text(self, prompts, sampling, **kw):  # noqa: ANN001, ANN003, ANN201
            return torch.multinomial(torch.tensor([[float("nan"), 1.0]]), 1)

        def score(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201
            raise RuntimeError("shape mismatch")

    bb = guard_backbone(Sampler(), "nan-sampler")
    with pytest.raises(NonFiniteError, match="'nan-sampler'.*generate_text sampled from non-finite probabilities") as err:
        bb.generate_text([], None)
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(BackboneError, match="shape mismatch"):
        bb.score()


def test_resume_command_of_a_python_started_run_rebuilds_its_recipe(pool: Path, tmp_path: Path) -> None:
    """Outside the CLI the resume command carries the run's --set overrides (and backbone, images), so it
    rebuilds the very recipe; a recipe that no registered name plus --set can rebuild goes to recipe.json."""
    tr = _trainer(pool, tmp_path / "run", 3, [*U_ONLY, "solver.lr=0.0003"])
    argv = shlex.split(tr.resume_command())
    assert argv[:8] == ["asg", "train", "--backbone", "tiny", "--images", str(pool), "--recipe", "demo"]
    assert argv[-2:] == ["--resume", str(tmp_path / "run")]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert "solver.lr=0.0003" in sets and "schedule.steps=3" in sets and "generator.update=false" in sets
    assert load_recipe("demo", sets).to_dict() == tr.recipe.to_dict()
    assert not (tmp_path / "run" / "recipe.json").exists()

    file_recipe = tmp_path / "mine.json"
    file_recipe.write_text(json.dumps({**tr.recipe.to_dict(), "name": "mine"}))
    tr.recipe = load_recipe(file_recipe)  # a file's name ("mine") is no registered recipe
    argv = shlex.split(tr.resume_command())
    written = tmp_path / "run" / "recipe.json"
    assert argv[argv.index("--recipe") + 1] == str(written) and "--set" not in argv
    assert load_recipe(written).to_dict() == tr.recipe.to_dict()
