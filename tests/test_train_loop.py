"""The loop end to end on the shipped `tiny` backbone: every reward and update fires, resume is exact,
two processes run, and the CLI commands (train, ask, generate) work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asg.backbones.tiny.model import TinyBackbone
from asg.shapes import write_unlabeled_folder
from asg.train.data import ImagePool
from asg.train.recipe import load_recipe
from asg.train.run import RunDir, read_jsonl
from asg.train.trainer import Trainer

# a short E1 cycle (UUUGG) with permissive gates so that every update has something to learn from
SHORT = ["schedule.steps=5", "run.checkpoint_every=2", "run.sample_every=4", "generator.spec_attempts=1",
         "generator.min_spec_quality=0.0", "generator.min_qa=1", "rewards.solver.easy_skip_majority=1.0",
         "rewards.solver.iqr_skip_majority=1.0", "rewards.solver.skip_uninformative=false",
         "proposer.ask.max_new_tokens=96"]
TIME_KEYS = ("step_time_sec",)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pool") / "images"
    write_unlabeled_folder(folder, n=16, seed=3, split="pool")
    return folder


def _train(pool: Path, out: Path, steps: int, *, resume: Path | None = None, overrides: list[str] = SHORT) -> Trainer:
    recipe = load_recipe("demo", [*overrides, f"schedule.steps={steps}"])
    backbone = TinyBackbone.load()
    run = RunDir.create(out, config={"recipe": recipe.to_dict()}, resume=resume is not None)
    trainer = Trainer(backbone, recipe, ImagePool(pool, seed=recipe.seed, image_size=backbone.image_size), run)
    if resume is not None:
        trainer.resume(resume)
    trainer.train()
    return trainer


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in read_jsonl(run / "metrics.jsonl").records]


@pytest.fixture(scope="module")
def e1_run(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer]:
    out = tmp_path_factory.mktemp("runs") / "e1"
    return out, _train(pool, out, 5)


def test_every_component_and_update_fires(e1_run: tuple[Path, Trainer]) -> None:
    """In UUUGG every reward component is logged and the solver, proposer and generator each step."""
    out, _ = e1_run
    rows = _metrics(out)
    assert [r["phase"] for r in rows] == list("UUUGG")
    u = [r for r in rows if r["phase"] == "U"]
    g = [r for r in rows if r["phase"] == "G"]
    for key in ("h_sc", "majority_fraction", "ste.raw", "ste.d_ste", "proposer.reward", "solver.reward_mean"):
        assert any(isinstance(r.get(key), float) for r in u), key
    for key in ("generator.qa_fidelity", "generator.cycle_consistency", "generator.diversity",
                "generator.contradiction", "generator.reward_mean"):
        assert any(isinstance(r.get(key), float) for r in g), key
    for role, rs in (("solver", u), ("proposer", u), ("generator", g)):
        assert any(r[f"{role}.stepped"] for r in rs), (role, [r.get(f"{role}.skip_reason") for r in rs])
        assert all(isinstance(r[f"{role}.stepped"], bool) for r in rs)
    # KL terms ran: β is logged per step and the solver's KL is a finite number where it stepped
    assert all("solver.beta" in r and "proposer.beta" in r and "generator.beta" in r for r in rows)


def test_run_directory_is_complete(e1_run: tuple[Path, Trainer]) -> None:
    """config, environment, status (completed), rollouts, checkpoints with SAVE_OK, samples."""
    out, trainer = e1_run
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 5
    assert json.loads((out / "config.json").read_text())["recipe"]["name"] == "demo"
    rollouts = read_jsonl(out / "rollouts.jsonl").records
    assert [r["step"] for r in rollouts] == [1, 2, 3, 4, 5] and all("image" in r for r in rollouts)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_000002", "step_000004", "step_000005"]
    assert all((out / "checkpoints" / c / "SAVE_OK").is_file() for c in ckpts)
    assert trainer.step == 5


def test_resume_reproduces_an_uninterrupted_run(pool: Path, tmp_path: Path) -> None:
    """4 steps straight == 2 steps, a fresh process state resumed from the checkpoint, 2 more steps."""
    straight = _train(pool, tmp_path / "straight", 4)
    _train(pool, tmp_path / "split", 2)
    resumed = _train(pool, tmp_path / "split", 4, resume=tmp_path / "split")
    a, b = straight.backbone.trainable_state_dict(), resumed.backbone.trainable_state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "split")
    moved = [k for k, v in a.items() if not torch.equal(v, TinyBackbone.load().trainable_state_dict()[k])]
    assert moved, "training changed no trainable tensor: the comparison above would be vacuous"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_ranks(pool: Path, out: Path, steps: int, hf_home: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """`asg train` under `accelerate launch` with 2 CPU processes (gloo), U and G alternating; must succeed."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HOME": str(hf_home),
           "ASG_PROGRESS": "0", **env_extra}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "asg", "train", "--backbone", "tiny",
           "--images", str(pool), "--recipe", "demo", "--steps", str(steps), "--out", str(out),
           *[x for item in SHORT if not item.startswith("schedule.steps") for x in ("--set", item)],
           "--set", "schedule.understanding=1", "--set", "schedule.generation=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_process_run(pool: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo) completes a U and a G step; rank 0 writes the run."""
    out = tmp_path / "ddp"
    _train_two_ranks(pool, out, 4, tmp_path / "hf")
    rows = _metrics(out)
    assert [r["phase"] for r in rows] == list("UGUG")
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "completed"
    assert status["metrics"]["ranks_in_sync"] is True  # both ranks ended with bit-identical adapters
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    # each rank read its own image of the step (§2: indices[(s-1)·W + r])
    pool_ = ImagePool(pool, seed=load_recipe("demo").seed)
    assert rows[0]["image"] == str(pool_.path_for(1, 0, 2)) != str(pool_.path_for(1, 1, 2))


def test_two_process_run_survives_a_nonfinite_step_on_one_rank(pool: Path, tmp_path: Path) -> None:
    """A non-finite output on rank 1 in U-step 1 and on rank 0 in G-step 2 (ASG_FAULT_INJECT): the failing
    rank skips its roles' updates but joins the gradient all-reduce, so nothing hangs, the other rank's
    update is shared, and both ranks end with bit-identical adapters."""
    out = tmp_path / "ddp_nan"
    proc = _train_two_ranks(pool, out, 3, tmp_path / "hf", ASG_FAULT_INJECT="nonfinite@1/1,nonfinite@2/0")
    assert "step 1: ASG_FAULT_INJECT: injected non-finite logits at step 1 on rank 1" in proc.stderr
    rows = _metrics(out)  # rank 0's records
    assert [r["phase"] for r in rows] == list("UGU")
    assert "nonfinite_output" not in rows[0] and rows[0]["proposer.stepped"] is True  # rank 0 stepped, rank 1 joined
    g = rows[1]  # rank 0 skipped; when rank 1 updated, its gradients made the shared step on both
    assert (g["generator.skip_reason"], g["nonfinite_output"]) == ("nonfinite_output", 1)
    assert not g["generator.stepped"] or g["generator.synced_only"] == 1.0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "completed" and status["metrics"]["ranks_in_sync"] is True


def test_cli_ask_and_generate(tmp_path: Path, pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`asg ask` prints questions, the N answers with votes, H_sc, STE; `asg generate` writes PNGs."""
    from asg.cli import main

    image = sorted(pool.glob("*.png"))[0]
    assert main(["ask", "--image", str(image), "--recipe", "demo"]) == 0
    text = capsys.readouterr().out
    assert "Proposer asked" in text
    if "no candidate passed" not in text:
        assert "H_sc" in text and "STE" in text and text.count("label") == 7
    assert main(["generate", "--prompt", "a red circle", "--n", "2", "--out", str(tmp_path / "g")]) == 0
    assert sorted(p.name for p in (tmp_path / "g").glob("*.png")) == ["grid.png", "image_00.png", "image_01.png"]


def test_train_refuses_existing_run_dir(e1_run: tuple[Path, Trainer], pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run directory is never overwritten: the error names it and the way out (--resume)."""
    from asg.cli import main

    out, _ = e1_run
    assert main(["train", "--images", str(pool), "--recipe", "demo", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err


def _cert(valid: bool, objective: bool) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(valid=valid, objective=SimpleNamespace(objective=objective))


def test_extra_questions_ranking() -> None:
    """The Solver's extra questions: valid and objective, never the pick, non-easy first, then by STE."""
    from types import SimpleNamespace

    from asg.train.ustep import _extra_questions

    certs = [_cert(True, True), _cert(True, True), _cert(False, True), _cert(True, False), _cert(True, True),
             _cert(True, True)]
    proposal = SimpleNamespace(certificates=certs)
    raws = [0.9, 0.2, 5.0, 5.0, 0.7, 0.4]
    spot = ["medium", "easy", "hard", "hard", "easy", "hard"]
    # pick 0 is excluded; 2 (invalid) and 3 (subjective) never qualify; 5 is non-easy, then 4 (0.7) before 1 (0.2)
    assert _extra_questions(proposal, raws, spot, "hard", 0, 5) == [5, 4, 1]
    assert _extra_questions(proposal, raws, spot, "hard", 0, 2) == [5, 4]
    assert _extra_questions(proposal, raws, spot, "hard", 0, 0) == []


def test_solver_trains_on_extra_questions(pool: Path, tmp_path: Path) -> None:
    """solver.questions_per_step = 3: the next candidates are answered N times and join the Solver's update."""
    out = tmp_path / "q3"
    _train(pool, out, 3, overrides=[*SHORT, "solver.questions_per_step=3", "schedule.understanding=3",
                                    "schedule.generation=0", "generator.update=false"])
    rows = _metrics(out)
    rollouts = read_jsonl(out / "rollouts.jsonl").records
    n = load_recipe("demo").solver.sample.n
    seen_extra = False
    for r, ro in zip(rows, rollouts):
        extra = ro.get("extra_questions", [])
        assert len(extra) <= 2
        for e in extra:
            assert e["question"] in ro["candidates"] and e["question"] != ro["question"]
            assert len(e["labels"]) == n and e["majority"] in e["labels"]
        if ro.get("question") is not None:
            # the pick and every extra question train the Solver unless the gate skips them (SHORT opens
            # most gates; a unanimous vote still counts as easy)
            assert r["solver.questions_trained"] == (ro["skip"] is None) + sum(e["skip"] is None for e in extra)
            seen_extra |= any(e["skip"] is None for e in extra) and r["solver.stepped"]
    assert seen_extra, [(ro.get("skip"), ro.get("extra_questions")) for ro in rollouts]


def test_canonical_targets_by_hand() -> None:
    """Distillation targets: the first majority-labelled completion (the greedy one when it agrees) under
    the canonical prompt without focus hint, with sample 0's image; no target without a greedy sample 0
    or without a sample of the majority."""
    from types import SimpleNamespace

    from PIL import Image

    from asg.roles.templates import RoleTemplates
    from asg.train.ustep import canonical_targets

    images = {f"Q{i}?": Image.new("RGB", (4, 4), (10 * i, 0, 0)) for i in range(1, 5)}

    def answers(question: str, labels: str, first_index: int = 0) -> SimpleNamespace:
        image = images.get(question, images["Q1?"])
        return SimpleNamespace(question=question, samples=[
            SimpleNamespace(label=lab, pps_index=first_index + i, prompt=SimpleNamespace(image=image),
                            completion=f"c{i}") for i, lab in enumerate(labels)])

    tpl = RoleTemplates.of(TinyBackbone.load())
    got = canonical_targets([answers("Q1?", "abbb"), answers("Q2?", "aab"), answers("Q3?", "ab", first_index=1),
                             answers("Q4?", "ab")], ["b", "a", "a", "z"], tpl)
    assert [(p.text, p.image is images[q], c) for (p, c), q in zip(got, ("Q1?", "Q2?"))] == [
        ("Q1? Answer inside <answer></answer>.", True, "c1"), ("Q2? Answer inside <answer></answer>.", True, "c0")]
    from asg.evaluation import solver_prompt_text

    assert got[0][0].text == solver_prompt_text(TinyBackbone.load(), "Q1?")  # what evaluation asks with
    with pytest.raises(ValueError):
        canonical_targets([answers("Q?", "ab")], [], tpl)


def test_solver_distillation_term(pool: Path, tmp_path: Path) -> None:
    """solver.distill_weight > 0 adds the canonical-prompt cross-entropy of the trained questions' majority
    answers to the Solver's update, and logs it; with 0 (the default) nothing of it is logged."""
    out = tmp_path / "distill"
    _train(pool, out, 2, overrides=[*SHORT, "solver.distill_weight=0.5", "schedule.understanding=2",
                                    "schedule.generation=0", "generator.update=false"])
    stepped = [r for r in _metrics(out) if r["solver.stepped"]]
    assert stepped, _metrics(out)
    for r in stepped:
        assert r["solver.distill_questions"] == r["solver.questions_trained"]
        assert r["solver.distill_ce"] > 0.0
    assert load_recipe("demo").solver.distill_weight == 0.0
    with pytest.raises(Exception, match="distill_weight"):
        load_recipe("demo", ["solver.distill_weight=-1"])


def test_solver_trains_on_scene_vote_labels(pool: Path, tmp_path: Path) -> None:
    """solver.scene_vote_questions = 4: every U-step with a question labels 4 family questions of its
    image by the scene vote, records them in the rollout and adds their cross-entropy to the Solver's
    update, which steps even where the §3.9 gate skips every question."""
    from asg.shapes import answer_question, scene_for
    from asg.shapes.scene_vote import family

    out = tmp_path / "scene"
    gated = [o for o in SHORT if not o.startswith("rewards.solver.easy_skip")] + ["rewards.solver.easy_skip_majority=0.0"]
    _train(pool, out, 2, overrides=[*gated, "solver.scene_vote_questions=4", "schedule.understanding=2",
                                    "schedule.generation=0", "generator.update=false"])
    rows = _metrics(out)
    rollouts = read_jsonl(out / "rollouts.jsonl").records
    questions = {q for _, q, _ in family()}
    seen = 0
    for r, ro in zip(rows, rollouts):
        if ro.get("question") is None:
            continue
        seen += 1
        assert r["solver.questions_trained"] == 0  # every majority is "easy" at easy_skip_majority 0
        assert r["solver.scene_vote_labels"] == len(ro["scene_vote"]) == 4
        assert r["solver.stepped"] and r["solver.scene_vote_ce"] > 0.0
        assert r["solver.scene_vote_changed"] == sum(s["label"] != s["independent"] for s in ro["scene_vote"])
        index = int(Path(ro["image"]).stem)
        for s in ro["scene_vote"]:
            assert s["question"] in questions
            # a label is an answer of the question's type (right or wrong: the loop never sees the truth)
            qa = answer_question(s["question"], scene_for("pool", 3, index))
            assert qa is None or s["label"].isdigit() == qa.answer.isdigit()
    assert seen, rollouts
    assert load_recipe("demo").solver.scene_vote_questions == 0
    with pytest.raises(Exception, match="scene_vote_questions"):
        load_recipe("demo", ["solver.scene_vote_questions=-1"])


def test_scene_vote_position_labels_and_label_types(pool: Path, tmp_path: Path) -> None:
    """solver.scene_vote_position = 4 with solver.scene_vote_types = count,existence: every labelled image
    gets 4 labels of those two types only, then up to 4 position questions about objects its decoded
    table names once, "yes" and "no" alternating; the metric counts them."""
    from asg.shapes import question_template
    from asg.shapes.scene_vote import family

    gated = [o for o in SHORT if not o.startswith("rewards.solver.easy_skip")] + ["rewards.solver.easy_skip_majority=0.0"]
    sets = [*gated, "solver.scene_vote_questions=4", "solver.scene_vote_position=4", "solver.scene_vote_types=count,existence",
            "solver.scene_vote_extra_images=1", "schedule.understanding=3", "schedule.generation=0", "generator.update=false"]
    out = tmp_path / "position"
    _train(pool, out, 3, overrides=sets)
    rows = _metrics(out)
    rollouts = read_jsonl(out / "rollouts.jsonl").records
    kinds = {q: kind for kind, q, _ in family()}
    images = 0
    for r, ro in zip(rows, rollouts):
        label_sets = [e["labels"] for e in ro["scene_vote_extra"]]
        if "scene_vote" in ro:
            label_sets.append(ro["scene_vote"])
            assert r["solver.scene_vote_position_labels"] == sum(s["kind"] == "position" for s in ro["scene_vote"])
        for labels in label_sets:
            family_labels = [s for s in labels if s["kind"] != "position"]
            position = [s for s in labels if s["kind"] == "position"]
            assert labels == family_labels + position and len(family_labels) == 4 and len(position) <= 4
            assert {kinds[s["question"]] for s in family_labels} <= {"count_all", "count_shape", "count_color", "existence"}
            assert all(question_template(s["question"])[0] == "position" for s in position)
            sides = [s["label"] for s in position]
            assert all(a != b for a, b in zip(sides, sides[1:])) and set(sides) <= {"yes", "no"}
            images += bool(position)
    assert images >= 2, rollouts  # the shipped base names at least two objects in most pool scenes
    with pytest.raises(Exception, match="scene_vote_questions > 0"):
        load_recipe("demo", ["solver.scene_vote_position=2"])
    with pytest.raises(Exception, match="scene_vote_types must be a comma-separated list"):
        load_recipe("demo", ["solver.scene_vote_questions=4", "solver.scene_vote_types=count,size"])
    recipe = load_recipe("demo")
    assert recipe.solver.scene_vote_position == 0 and recipe.solver.scene_vote_type_list == ("count", "color", "shape", "existence")


def test_scene_vote_extra_images_each_make_a_solver_update(pool: Path, tmp_path: Path) -> None:
    """solver.scene_vote_extra_images = 2: every U-step, asked question or not, draws 2 more pool images,
    labels 4 family questions of each by the scene vote and takes one Solver update per image on those
    labels alone; the Solver's step count is 2 per U-step plus its main updates."""
    from asg.shapes.scene_vote import family

    gated = [o for o in SHORT if not o.startswith("rewards.solver.easy_skip")] + ["rewards.solver.easy_skip_majority=0.0"]
    sets = [*gated, "solver.scene_vote_questions=4", "solver.scene_vote_extra_images=2", "schedule.understanding=3",
            "schedule.generation=0", "generator.update=false"]
    out = tmp_path / "extra"
    tr = _train(pool, out, 3, overrides=sets)
    rows = _metrics(out)
    rollouts = read_jsonl(out / "rollouts.jsonl").records
    questions = {q for _, q, _ in family()}
    pool_files = {p.resolve() for p in pool.glob("*.png")}
    assert len(rows) == 3 and all(r["phase"] == "U" for r in rows)
    main_steps = 0
    for r, ro in zip(rows, rollouts):
        assert r["solver.scene_vote_extra_updates"] == 2 and r["solver.scene_vote_extra_labels"] == 8, r
        assert r["solver.scene_vote_extra_ce"] > 0.0
        extra = ro["scene_vote_extra"]
        assert len(extra) == 2 and all(e["stepped"] and e["skip"] is None for e in extra)
        assert all(Path(e["image"]).resolve() in pool_files for e in extra)
        labels = [lab for e in extra for lab in e["labels"]]
        assert len(labels) == 8 and all(lab["question"] in questions for lab in labels)
        assert r["solver.scene_vote_extra_changed"] == sum(lab["label"] != lab["independent"] for lab in labels)
        main_steps += bool(r["solver.stepped"])
    assert tr.updaters["solver"].steps == main_steps + 2 * 3
    # the same images and labels again from the same seed
    again = tmp_path / "again"
    _train(pool, again, 1, overrides=sets)
    assert read_jsonl(again / "rollouts.jsonl").records[0]["scene_vote_extra"] == rollouts[0]["scene_vote_extra"]
    with pytest.raises(Exception, match="scene_vote_questions > 0"):
        load_recipe("demo", ["solver.scene_vote_extra_images=2"])
    assert load_recipe("demo").solver.scene_vote_extra_images == 0
