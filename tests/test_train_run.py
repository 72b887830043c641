"""The run directory: metadata, atomic status, crash-tolerant JSON-lines logs, resume truncation, samples."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asg.errors import AsgError, ConfigError, DataError
from asg.train import run as run_mod
from asg.train.run import RunDir, jsonable, read_jsonl, step_name

CONFIG = {"recipe": {"name": "e2", "seed": 42, "schedule": {"steps": 6}}, "backbone": "tiny"}


def _strict(text: str) -> object:
    """json.loads that refuses NaN/Infinity, i.e. only valid JSON."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


def test_create_writes_config_and_environment(tmp_path: Path) -> None:
    """A new run writes config.json (the given config) and environment.json (versions, device, host, argv)."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False, argv=["asg", "train"])
    assert json.loads(run.config_path.read_text()) == CONFIG
    env = json.loads(run.environment_path.read_text())
    assert env["argv"] == ["asg", "train"] and env["cpu_count"] >= 1 and env["hostname"]
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(env["packages"]) >= {"transformers", "diffusers", "peft", "accelerate"}
    assert env["device"]["kind"] in ("cpu", "cuda", "mps") and "git_commit" in env and env["time"]


def test_refuses_previous_run_without_resume(tmp_path: Path) -> None:
    """A directory that holds a run is not overwritten: the error names it and the ways out (--resume, --out)."""
    RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    with pytest.raises(ConfigError) as err:
        RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    assert str(tmp_path / "r") in str(err.value) and "--resume" in str(err.value) and "--out" in str(err.value)


def test_resume_needs_a_run_and_fresh_run_accepts_empty_dir(tmp_path: Path) -> None:
    """--resume on a directory without a run is an error; a new run may use an existing empty directory."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="drop --resume"):
        RunDir.create(tmp_path / "empty", config=CONFIG, resume=True)
    assert RunDir.create(tmp_path / "empty", config=CONFIG, resume=False).config_path.is_file()


@pytest.mark.parametrize("failure", [FileNotFoundError("git"), subprocess.TimeoutExpired(["git"], 5)])
def test_missing_or_hanging_git_gives_no_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    """Without git (or when it hangs past the timeout) environment.json records git_commit null, no error."""
    def broken(*args: object, **kwargs: object) -> None:
        raise failure
    monkeypatch.setattr(run_mod.subprocess, "run", broken)
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    assert json.loads(run.environment_path.read_text())["git_commit"] is None


def test_status_fields_and_sticky_values(tmp_path: Path) -> None:
    """status.json carries progress, rate and ETA; last_checkpoint given once stays until replaced."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    run.write_status("running", step=0, steps_total=10)
    run.write_status("running", step=4, phase="U", last_checkpoint=tmp_path / "c", reward=np.float32(0.5))
    s = run.write_status("running", step=5, phase="G")
    on_disk = json.loads(run.status_path.read_text())
    assert on_disk["step"] == 5 and on_disk["phase"] == "G" and on_disk["steps_total"] == 10
    assert on_disk["steps_done"] == 5 and on_disk["steps_remaining"] == 5 and on_disk["progress"] == 0.5
    assert on_disk["last_checkpoint"] == str(tmp_path / "c") and on_disk["last_error"] is None
    assert on_disk["steps_per_sec"] > 0 and on_disk["eta_sec"] == pytest.approx(5 / on_disk["steps_per_sec"])
    assert on_disk["updated_at"] and s["state"] == "running"
    failed = run.write_status("failed", last_error=RuntimeError("boom"), steps_per_sec=2.0)
    assert failed["last_error"] == "RuntimeError: boom" and failed["step"] == 5 and failed["eta_sec"] == 2.5
    with pytest.raises(ConfigError, match="running, completed, failed"):
        run.write_status("done")


def test_status_survives_a_crash_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies before its rename leaves the previous status.json intact and no temp file behind."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    run.write_status("running", step=3, steps_total=10)
    before = run.status_path.read_text()

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")
    monkeypatch.setattr(run_mod.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        run.write_status("running", step=4)
    assert run.status_path.read_text() == before
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []


def test_status_is_always_valid_json_to_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling status.json while it is rewritten 200 times never sees a partial file."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    run.write_status("running", step=0, steps_total=200)
    stop, seen, errors = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(_strict(run.status_path.read_text())["step"])
            except ValueError as exc:  # a torn read
                errors.append(exc)
    t = threading.Thread(target=reader)
    t.start()
    for step in range(1, 201):
        run.write_status("running", step=step, phase="U", loss=float("nan"))
    stop.set()
    t.join()
    assert errors == [] and len(seen) > 0 and _strict(run.status_path.read_text())["metrics"]["loss"] is None


def test_records_are_valid_json_with_numpy_torch_and_non_finite(tmp_path: Path) -> None:
    """numpy/torch scalars become numbers and NaN/inf become null, so every line is strict JSON."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    run.append_metrics({"step": 1, "a": np.float32(0.25), "b": torch.tensor(3), "c": float("nan"),
                        "d": [float("inf"), np.int64(2)], "e": torch.tensor([0.5, float("-inf")]), "f": True})
    line = run.metrics_path.read_text().splitlines()[0]
    assert _strict(line) == {"step": 1, "a": 0.25, "b": 3, "c": None, "d": [None, 2], "e": [0.5, None], "f": True}
    with pytest.raises(TypeError, match="x.y"):
        jsonable({"y": object()}, "x")


def test_every_record_needs_a_step(tmp_path: Path) -> None:
    """A record without an int step is refused (resume could not place it) and nothing is written."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    with pytest.raises(ConfigError, match="step"):
        run.append_rollouts([{"step": 1}, {"question": "how many?"}])
    assert not run.rollouts_path.exists()


def test_read_jsonl_tolerates_and_reports_a_cut_short_last_line(tmp_path: Path) -> None:
    """A crash mid-write leaves a partial last line: the complete records are read and the fragment reported."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "re')
    got = read_jsonl(path)
    assert [r["step"] for r in got.records] == [1, 2] and got.truncated == '{"step": 3, "re'
    path.write_text('{"step": 1}\n{"step": 2}')  # complete object, only the newline missing
    assert [r["step"] for r in read_jsonl(path).records] == [1, 2] and read_jsonl(path).truncated is None
    assert read_jsonl(tmp_path / "missing.jsonl").records == ()


def test_read_jsonl_rejects_damage_before_the_end(tmp_path: Path) -> None:
    """A bad line that is not the last is damage, not a crash: a DataError naming the file and line number."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2"):
        read_jsonl(path)


def _log_step(run: RunDir, step: int) -> None:
    run.append_metrics({"step": step, "phase": "U" if step % 2 else "G", "r": step / 10})
    run.append_rollouts([{"step": step, "k": k} for k in range(2)])


def test_resume_truncates_logs_to_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    """Crash in step 5 after checkpoint 3, resume, log 4-6: metrics and rollouts equal a run that never stopped."""
    straight = RunDir.create(tmp_path / "a", config=CONFIG, resume=False)
    for step in range(1, 7):
        _log_step(straight, step)
    crashed = RunDir.create(tmp_path / "b", config=CONFIG, resume=False)
    for step in range(1, 5):
        _log_step(crashed, step)
    with open(crashed.metrics_path, "a") as f:
        f.write('{"step": 5, "pha')  # the crash
    resumed = RunDir.create(tmp_path / "b", config=CONFIG, resume=True)
    dropped = resumed.truncate_after(3)
    assert dropped == {"metrics.jsonl": 2, "rollouts.jsonl": 2}  # step 4 + the fragment; step 4's two rollouts
    for step in range(4, 7):
        _log_step(resumed, step)
    assert resumed.metrics_path.read_bytes() == straight.metrics_path.read_bytes()
    assert resumed.rollouts_path.read_bytes() == straight.rollouts_path.read_bytes()


def test_resume_restores_a_missing_final_newline(tmp_path: Path) -> None:
    """A last record complete but for its newline is kept, and the next append starts on a line of its own."""
    RunDir.create(tmp_path / "r", config=CONFIG, resume=False).append_metrics({"step": 1})
    resumed = RunDir.create(tmp_path / "r", config=CONFIG, resume=True)
    resumed.metrics_path.write_text('{"step": 1}\n{"step": 2}')
    assert resumed.truncate_after(2) == {"metrics.jsonl": 0, "rollouts.jsonl": 0}
    resumed.append_metrics({"step": 3})
    assert [r["step"] for r in resumed.read_metrics().records] == [1, 2, 3]


def test_resumed_run_must_truncate_before_logging(tmp_path: Path) -> None:
    """Logging on a reopened run before truncate_after(step) is refused (it would keep records past the checkpoint)."""
    RunDir.create(tmp_path / "r", config=CONFIG, resume=False).append_metrics({"step": 1})
    resumed = RunDir.create(tmp_path / "r", config=CONFIG, resume=True)
    with pytest.raises(AsgError, match="truncate_after"):
        resumed.append_metrics({"step": 2})
    resumed.truncate_after(0)
    assert resumed.read_metrics().records == ()


def test_resume_records_config_changes_and_earlier_starts(tmp_path: Path) -> None:
    """Resuming with a changed config lists the changed keys (old, new) and keeps the earlier environment."""
    RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    changed = {**CONFIG, "recipe": {**CONFIG["recipe"], "schedule": {"steps": 12}}}
    resumed = RunDir.create(tmp_path / "r", config=changed, resume=True)
    assert resumed.config_changes == {"recipe.schedule.steps": [6, 12]}
    env = json.loads(resumed.environment_path.read_text())
    assert env["config_changes"] == {"recipe.schedule.steps": [6, 12]} and len(env["previous_starts"]) == 1
    assert json.loads(resumed.config_path.read_text()) == changed


def test_resume_carries_elapsed_time_and_rate_counts_this_session(tmp_path: Path) -> None:
    """After a resume, elapsed_sec adds the earlier sessions' time and steps_started_from is the checkpoint step."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    run.write_status("running", step=3, steps_total=6, elapsed_sec=100.0)
    resumed = RunDir.create(tmp_path / "r", config=CONFIG, resume=True)
    resumed.truncate_after(3)
    s = resumed.write_status("running", step=4)
    assert s["elapsed_sec"] >= 100.0 and s["steps_started_from"] == 3 and s["steps_total"] == 6


def test_samples_are_saved_per_step(tmp_path: Path) -> None:
    """save_images writes samples/step_000050/<name>.png; names must be plain and one per image."""
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    imgs = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    paths = run.save_images(50, imgs, ["best_0_r0.910", "cand_1.png"])
    assert [p.relative_to(run.path).as_posix() for p in paths] == [
        "samples/step_000050/best_0_r0.910.png", "samples/step_000050/cand_1.png"]
    assert Image.open(paths[1]).getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ConfigError, match="one name per image"):
        run.save_images(50, imgs, ["a"])
    with pytest.raises(ConfigError, match="bad file name"):
        run.save_images(50, imgs[:1], ["../escape"])
    assert step_name(5) == "step_000005" and step_name(1234567) == "step_1234567"
