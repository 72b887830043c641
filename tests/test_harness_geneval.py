"""GenEval through the official evaluator (``asg.harness.geneval``) and its two suites, on CPU without network:
the sample writer with `tiny` (layout, seeds, resume), the evaluator bridge with a stand-in script, the
score parser against a recorded evaluator output, and ``benchmarks geneval`` / ``geneval_mini`` end to end."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from asg.errors import AsgError, ConfigError, DataError
from asg.harness import geneval as gv

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "harness" / "geneval"
METADATA = FIXTURES / "evaluation_metadata.jsonl"  # 6 ShapesWorld prompts in GenEval's format, one per tag
RESULTS = FIXTURES / "results.jsonl"  # a recorded evaluate_images.py output: 10 prompts, 40 images


@pytest.fixture(scope="module")
def tiny() -> Any:
    from asg.plugins import get_backbone_class

    return get_backbone_class("tiny").load()


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- prompts --------------------------------------------------------------------------------------------
def test_read_prompts_keeps_each_line() -> None:
    prompts = gv.read_prompts(METADATA)
    lines = METADATA.read_text().splitlines()
    assert [p["tag"] for p in prompts] == list(gv.TAGS)
    assert [p.line for p in prompts] == lines and [p.lineno for p in prompts] == [1, 2, 3, 4, 5, 6]
    assert prompts[2]["exclude"] == [{"class": "circle", "count": 4}]
    assert prompts[4]["include"][1]["position"] == ["above", 0]


GOOD = '{"tag": "single_object", "include": [{"class": "cup", "count": 1}], "prompt": "a photo of a cup"}'


@pytest.mark.parametrize("line, words", [
    ('{"tag": "colors", "prompt": ', "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"include": [{"class": "cup", "count": 1}], "prompt": "a cup"}', 'missing "tag"'),
    ('{"tag": "colors", "include": [{"class": "cup", "count": 1}]}', 'missing "prompt"'),
    ('{"tag": "colors", "prompt": "a cup"}', 'missing "include"'),
    ('{"tag": "texture", "include": [{"class": "cup", "count": 1}], "prompt": "a cup"}', "unknown tag 'texture'"),
    ('{"tag": "colors", "include": [], "prompt": "a cup"}', "non-empty list"),
    ('{"tag": "colors", "include": [{"count": 1}], "prompt": "a cup"}', 'needs a "class"'),
    ('{"tag": "counting", "include": [{"class": "cup", "count": 0}], "prompt": "no cups"}', '"count" >= 1'),
    ('{"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "teal"}], "prompt": "a teal cup"}', "'teal'"),
    ('{"tag": "position", "include": [{"class": "cup", "count": 1, "position": ["left of", 0]}], "prompt": "x"}',
     "earlier include clause"),
])
def test_read_prompts_errors_name_file_and_line(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n")  # the blank line 2 is skipped but still counted
    with pytest.raises(DataError) as e:
        gv.read_prompts(path)
    assert f"{path}:3:" in str(e.value) and words in str(e.value)


def test_read_prompts_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such prompt file"):
        gv.read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no prompts"):
        gv.read_prompts(tmp_path / "empty.jsonl")


def _official_shaped(path: Path, counts: dict[str, int] | None = None) -> Path:
    """A synthetic metadata file with GenEval's size and per-tag counts (not GenEval's prompts)."""
    lines = []
    for tag, n in (counts or gv.OFFICIAL_TAG_COUNTS).items():
        lines += [json.dumps({"tag": tag, "include": [{"class": f"thing{i}", "count": 1}], "prompt": f"{tag} {i}"})
                  for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_set_id(tmp_path: Path) -> None:
    official = _official_shaped(tmp_path / "evaluation_metadata.jsonl")
    digest = hashlib.sha256(official.read_bytes()).hexdigest()
    prompts = gv.read_prompts(official)
    assert len(prompts) == 553
    assert gv.prompt_set_id(official, prompts) == f"geneval-553 (evaluation_metadata.jsonl, sha256 {digest})"
    long = shutil.copy(official, tmp_path / "evaluation_metadata_long.jsonl")  # BAGEL's rewrite: same shape
    assert gv.prompt_set_id(long) == f"geneval-553 (evaluation_metadata_long.jsonl, sha256 {digest})"
    # 553 prompts with other per-tag counts, and the 6-prompt fixture, are custom sets
    skewed = _official_shaped(tmp_path / "skewed.jsonl", {**gv.OFFICIAL_TAG_COUNTS, "colors": 93, "position": 101})
    assert gv.prompt_set_id(skewed).startswith("custom (skewed.jsonl, 553 prompts, sha256 ")
    fixture_digest = hashlib.sha256(METADATA.read_bytes()).hexdigest()
    assert gv.prompt_set_id(METADATA) == f"custom (evaluation_metadata.jsonl, 6 prompts, sha256 {fixture_digest})"


# -- the writer -----------------------------------------------------------------------------------------
def test_write_samples_layout_seeds_and_determinism(tiny: Any, tmp_path: Path) -> None:
    prompts = gv.read_prompts(METADATA)
    out = tmp_path / "a"
    info = gv.write_samples(tiny, prompts, out, seed=3, batch_size=8, steps=2, progress=False)
    assert info["written"] == 6 and info["skipped"] == 0 and info["role"] == "generator"
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}" for i in range(6)] + [gv.MANIFEST]
    lines = METADATA.read_text().splitlines()
    for i in range(6):
        folder = out / f"{i:05d}"
        assert sorted(p.name for p in folder.iterdir()) == ["metadata.jsonl", "samples"]
        assert (folder / "metadata.jsonl").read_text() == lines[i] + "\n"
        assert json.loads((folder / "metadata.jsonl").read_text()) == prompts[i]  # what the evaluator json.load()s
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
        for png in (folder / "samples").iterdir():
            with Image.open(png) as im:
                assert im.format == "PNG" and im.size == tuple(tiny.image_size) and im.mode == "RGB"
    # the same seed gives the same pixels
    again = tmp_path / "b"
    gv.write_samples(tiny, prompts, again, seed=3, batch_size=8, steps=2, progress=False)
    for png in sorted(out.glob("*/samples/*.png")):
        assert np.array_equal(_pixels(png), _pixels(again / png.relative_to(out)))
    # and the same noise whatever the batch size (2 images per call: each prompt in two calls); only float
    # rounding of another batch shape may move a pixel by one step
    halves = tmp_path / "halves"
    gv.write_samples(tiny, prompts, halves, seed=3, batch_size=2, steps=2, progress=False)
    for png in sorted(out.glob("*/samples/*.png")):
        diff = np.abs(_pixels(png).astype(int) - _pixels(halves / png.relative_to(out)).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # image j of prompt i is drawn from seed * 1000003 + i * 4 + j (here prompt 4, image 2)
    assert gv.image_seed(3, 4, 2, 4) == 3 * 1_000_003 + 18
    with tiny.use_role("generator"):
        direct = tiny.generate_images([prompts[4]["prompt"]], seed=gv.image_seed(3, 4, 2, 4), num_steps=2)[0].image
    diff = np.abs(np.asarray(direct.convert("RGB")).astype(int) - _pixels(out / "00004/samples/0002.png").astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # another seed, other pixels
    other = tmp_path / "c"
    gv.write_samples(tiny, prompts[:1], other, seed=4, steps=2, progress=False)
    assert not np.array_equal(_pixels(other / "00000/samples/0000.png"), _pixels(out / "00000/samples/0000.png"))


class _Counting:
    """Wraps a backbone's generate_images: counts the calls and can fail on the n-th one (a crash)."""

    def __init__(self, backbone: Any, monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.fail_on = fail_on
        real = backbone.generate_images

        def generate(texts: list[str], **kw: Any) -> Any:
            self.calls.append((list(texts), kw["seed"]))
            if self.fail_on is not None and len(self.calls) == self.fail_on:
                raise KeyboardInterrupt("simulated crash")
            return real(texts, **kw)

        monkeypatch.setattr(backbone, "generate_images", generate)


def test_write_samples_resumes(tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = gv.read_prompts(METADATA)
    out = tmp_path / "s"
    # a crash during the 3rd call (one prompt per call): prompts 0 and 1 are complete, nothing else is there
    crash = _Counting(tiny, monkeypatch, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        gv.write_samples(tiny, prompts, out, batch_size=4, steps=1, progress=False)
    assert len(crash.calls) == 3
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001"]
    first = {p: p.stat().st_mtime_ns for p in out.glob("0000[01]/samples/*.png")}
    # a folder interrupted while being written (its temporary name left behind) is redone
    partial = out / ".00002.partial" / "samples"
    partial.mkdir(parents=True)
    (partial / "0000.png").write_bytes(b"half")
    monkeypatch.undo()
    resumed = _Counting(tiny, monkeypatch)
    info = gv.write_samples(tiny, prompts, out, batch_size=4, steps=1, progress=False)
    assert info["written"] == 4 and info["skipped"] == 2
    assert [texts[0] for texts, _ in resumed.calls] == [p["prompt"] for p in prompts[2:]]
    assert [seed for _, seed in resumed.calls] == [8, 12, 16, 20]  # seed 0: prompt i starts at i * 4
    assert not list(out.glob(".*.partial"))
    assert {p: p.stat().st_mtime_ns for p in out.glob("0000[01]/samples/*.png")} == first  # untouched
    # all complete: nothing is generated; a folder with a missing sample is redone, alone
    (out / "00003" / "samples" / "0001.png").unlink()
    resumed.calls.clear()
    info = gv.write_samples(tiny, prompts, out, batch_size=8, steps=1, progress=False)
    assert info["written"] == 1 and [len(texts) for texts, _ in resumed.calls] == [4]
    assert resumed.calls[0][1] == 12 and (out / "00003" / "samples" / "0001.png").is_file()


def test_write_samples_refuses_to_mix(tiny: Any, tmp_path: Path) -> None:
    prompts = gv.read_prompts(METADATA)
    out = tmp_path / "s"
    gv.write_samples(tiny, prompts[:1], out, steps=1, progress=False)
    with pytest.raises(ConfigError, match="other settings.*seed 0 -> 1"):
        gv.write_samples(tiny, prompts[:1], out, seed=1, steps=1, progress=False)
    with pytest.raises(ConfigError, match="identity None -> {'run': 'evolved'}"):  # base samples, evolved model
        gv.write_samples(tiny, prompts[:1], out, steps=1, progress=False, identity={"run": "evolved"})
    with pytest.raises(ConfigError, match="different prompt file"):
        gv.write_samples(tiny, prompts[1:2], out, steps=1, progress=False)
    foreign = tmp_path / "foreign"
    (foreign / "00000" / "samples").mkdir(parents=True)
    with pytest.raises(ConfigError, match="asg did not write"):
        gv.write_samples(tiny, prompts[:1], foreign, steps=1, progress=False)
    with pytest.raises(ConfigError, match=">= 1"):
        gv.write_samples(tiny, prompts, tmp_path / "x", images_per_prompt=0, progress=False)


# -- the bridge to the official evaluator ------------------------------------------------------------------
# Stands in for GenEval's evaluation/evaluate_images.py: the same command line, the same walk over the
# prompt folders and the same per-image fields; an image is "correct" when its number is even.
FAKE_EVALUATOR = '''
import argparse, json, os, re, time
p = argparse.ArgumentParser()
p.add_argument("imagedir")
p.add_argument("--outfile", default="results.jsonl")
p.add_argument("--model-path", default="./")
p.add_argument("--options", nargs="*", default=[])
a = p.parse_args()
assert os.path.isfile("evaluation/evaluate_images.py"), "cwd must be the GenEval clone"
assert "PYTHONPATH" not in os.environ
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
if os.environ.get("FAKE_FAIL"):
    raise SystemExit("boom: " + os.environ["FAKE_FAIL"])
rows = []
for sub in sorted(os.listdir(a.imagedir)):
    folder = os.path.join(a.imagedir, sub)
    if not os.path.isdir(folder) or not sub.isdigit():
        continue
    with open(os.path.join(folder, "metadata.jsonl")) as f:
        meta = json.load(f)
    for name in sorted(os.listdir(os.path.join(folder, "samples"))):
        if re.match(r"\\d+\\.png", name):
            ok = int(name[:-4]) % 2 == 0
            rows.append({"filename": os.path.join(folder, "samples", name), "tag": meta["tag"],
                         "prompt": meta["prompt"], "correct": ok, "reason": "" if ok else "expected more",
                         "metadata": json.dumps(meta), "details": json.dumps({})})
with open(a.outfile, "w") as f:
    f.write("".join(json.dumps(r).replace("/", "\\\\/") + "\\n" for r in rows))
'''


def _fake_geneval(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "geneval"
    (repo / "evaluation").mkdir(parents=True)
    (repo / "evaluation" / "evaluate_images.py").write_text(textwrap.dedent(FAKE_EVALUATOR))
    detector = tmp_path / "models"
    detector.mkdir()
    (detector / gv.DETECTOR_CHECKPOINT).write_bytes(b"")
    return repo, detector


def _hand_samples(root: Path) -> Path:
    """GenEval's layout without a backbone: the fixture's 6 prompts, 4 blank images each."""
    for i, line in enumerate(METADATA.read_text().splitlines()):
        (root / f"{i:05d}" / "samples").mkdir(parents=True)
        (root / f"{i:05d}" / "metadata.jsonl").write_text(line + "\n")
        for j in range(4):
            Image.new("RGB", (8, 8)).save(root / f"{i:05d}" / "samples" / f"{j:04d}.png")
    return root


def test_run_official_evaluator_with_a_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, detector = _fake_geneval(tmp_path)
    samples = _hand_samples(tmp_path / "samples")
    monkeypatch.setenv("PYTHONPATH", "/not/for/the/evaluator")
    out = gv.run_official_evaluator(samples, geneval_repo=repo, python=sys.executable, detector_dir=detector,
                                    outfile=tmp_path / "res" / "results.jsonl")
    assert out == (tmp_path / "res" / "results.jsonl").resolve()
    assert (tmp_path / "res" / "results.jsonl.log").read_text().startswith(f"$ {sys.executable} evaluation/evaluate_images.py")
    parsed = gv.parse_results(out)
    # images 0000 and 0002 of every prompt are correct: 2/4 per task, every prompt has a correct image
    assert parsed["tasks"] == {t: 50.0 for t in gv.TAGS} and parsed["overall"] == 50.0
    assert parsed["prompt_accuracy"] == 100.0 and parsed["counts"]["images"] == 24 and parsed["complete"]


def test_run_official_evaluator_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, detector = _fake_geneval(tmp_path)
    samples = _hand_samples(tmp_path / "samples")
    kw: dict[str, Any] = {"geneval_repo": repo, "python": sys.executable, "detector_dir": detector,
                          "outfile": tmp_path / "r.jsonl"}
    with pytest.raises(ConfigError, match="no such directory"):
        gv.run_official_evaluator(samples, **{**kw, "geneval_repo": tmp_path / "nowhere"})
    with pytest.raises(ConfigError, match="evaluate_images.py: not found"):
        gv.run_official_evaluator(samples, **{**kw, "geneval_repo": tmp_path / "samples"})
    with pytest.raises(ConfigError, match="no such Python interpreter"):
        gv.run_official_evaluator(samples, **{**kw, "python": tmp_path / "envs" / "bin" / "python"})
    with pytest.raises(ConfigError, match="no such Python interpreter"):
        gv.run_official_evaluator(samples, **{**kw, "python": "no-such-python-anywhere"})
    with pytest.raises(ConfigError, match="--detector-dir"):
        gv.run_official_evaluator(samples, **{**kw, "detector_dir": tmp_path / "nodet"})
    (detector / gv.DETECTOR_CHECKPOINT).unlink()
    with pytest.raises(ConfigError, match="download_models.sh"):
        gv.run_official_evaluator(samples, **kw)
    (detector / gv.DETECTOR_CHECKPOINT).write_bytes(b"")
    with pytest.raises(ConfigError, match="no GenEval sample folders"):
        gv.run_official_evaluator(tmp_path / "models", **kw)
    monkeypatch.setenv("FAKE_FAIL", "CUDA device required")
    with pytest.raises(gv.EvaluatorError, match=r"exited with 1(.|\n)*boom: CUDA device required"):
        gv.run_official_evaluator(samples, **kw)
    assert not (tmp_path / "r.jsonl").exists()
    monkeypatch.setenv("FAKE_SLEEP", "30")
    with pytest.raises(gv.EvaluatorError, match="did not finish within 0.5 s"):
        gv.run_official_evaluator(samples, **kw, timeout=0.5)
    assert issubclass(gv.EvaluatorError, AsgError)


# -- scores ---------------------------------------------------------------------------------------------
def test_parse_recorded_results_by_hand() -> None:
    """The recorded output (10 prompts x 4 images; correct images per prompt in brackets):
    single_object [4, 3] -> 7/8 = 87.5; two_object [2, 0] -> 2/8 = 25; counting [1] -> 1/4 = 25;
    colors [4, 2] -> 6/8 = 75; position [0] -> 0/4 = 0; color_attr [1, 0] -> 1/8 = 12.5.
    overall = (87.5 + 25 + 25 + 75 + 0 + 12.5) / 6 = 225 / 6 = 37.5;
    images 17/40 = 42.5%; prompts with a correct image 7/10 = 70% (all but two_object #2, position,
    color_attr #2). The same numbers as evaluation/summary_scores.py (as fractions) on this file."""
    r = gv.parse_results(RESULTS)
    assert r["tasks"] == {"single_object": 87.5, "two_object": 25.0, "counting": 25.0, "colors": 75.0,
                          "position": 0.0, "color_attr": 12.5}
    assert r["overall"] == pytest.approx(37.5)
    assert r["image_accuracy"] == pytest.approx(42.5) and r["prompt_accuracy"] == pytest.approx(70.0)
    assert r["counts"]["images"] == 40 and r["counts"]["correct_images"] == 17
    assert r["counts"]["prompts"] == 10 and r["counts"]["correct_prompts"] == 7
    assert r["counts"]["per_tag"]["colors"] == {"images": 8, "correct": 6, "prompts": 2}
    assert r["complete"] and r["missing_tags"] == [] and r["unknown_tags"] == []


def test_parse_results_partial_and_malformed(tmp_path: Path) -> None:
    lines = RESULTS.read_text().splitlines()
    # only single_object and position: the overall is their mean, (87.5 + 0) / 2, and the gap is said
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(l for l in lines if '"tag":"single_object"' in l or '"tag":"position"' in l) + "\n")
    r = gv.parse_results(partial)
    assert r["overall"] == pytest.approx(43.75) and not r["complete"]
    assert r["missing_tags"] == ["two_object", "counting", "colors", "color_attr"]
    from benchmarks import geneval as suite  # the suite says so too, and marks the result a subset

    suite.main(["--parse", str(partial), "--out", str(tmp_path / "p.json")])
    result = json.loads((tmp_path / "p.json").read_text())
    assert list(result["metrics"]) == ["single_object", "position", "overall"]
    assert result["_meta"]["limit"] == "2 of 6 tasks"
    assert result["_meta"]["task_variant"] == "GenEval partial (single_object, position; missing two_object, " \
        "counting, colors, color_attr)"
    assert "**Incomplete**" in (tmp_path / "p.md").read_text()
    for bad, words in [("{not json", "not valid JSON"), ('{"tag": "colors"}', '"correct" must be true or false'),
                       ('{"correct": true}', 'missing "tag"'), ('{"tag": "colors", "correct": 1}', "got 1"),
                       ('{"tag": "colors", "correct": true}', 'neither "metadata" nor "filename"')]:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join(lines[:4] + [bad] + lines[5:]) + "\n")
        with pytest.raises(DataError) as e:
            gv.parse_results(broken)
        assert f"{broken}:5:" in str(e.value) and words in str(e.value)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no results"):
        gv.parse_results(tmp_path / "empty.jsonl")


# -- the suites -----------------------------------------------------------------------------------------
def test_geneval_suite_parse_and_report(tmp_path: Path) -> None:
    from benchmarks import geneval as suite

    out = tmp_path / "geneval.json"
    suite.main(["--backbone", "tiny", "--parse", str(RESULTS), "--prompts", str(METADATA), "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["metrics"]) == ["single_object", "two_object", "counting", "colors", "position",
                                       "color_attr", "overall"]
    assert result["metrics"]["overall"] == pytest.approx(37.5) and result["metrics"]["colors"] == 75.0
    assert result["image_accuracy"] == 42.5 and result["prompt_accuracy"] == 70.0
    meta = result["_meta"]
    assert meta["suite"] == "geneval" and meta["harness"] == suite.HARNESS and meta["judge"] == suite.JUDGE
    assert meta["task_variant"] == "GenEval 6 tasks" and meta["seeds"] == [0] and meta["images_per_prompt"] == 4
    assert meta["limit"] is None
    assert meta["prompt_set"].startswith("custom (evaluation_metadata.jsonl, 6 prompts, sha256 ")
    assert meta["backbone"]["name"] == "tiny" and meta["backbone"]["stage"] == "base"
    page = out.with_suffix(".md").read_text()
    assert "| **Overall** | 37.5 | 17 / 40 |" in page and "| Colors | 75.0 | 6 / 8 |" in page
    suite.main(["--report", "--out", str(out)])
    assert out.with_suffix(".md").read_text() == page
    assert json.loads(out.read_text()) == result


def test_geneval_suite_samples_then_evaluator(tmp_path: Path) -> None:
    """Step 1 with tiny and step 2 with the stand-in evaluator, through the suite's command line."""
    from benchmarks import geneval as suite

    repo, detector = _fake_geneval(tmp_path)
    samples, out = tmp_path / "samples", tmp_path / "g.json"
    suite.main(["--backbone", "tiny", "--device", "cpu", "--prompts", str(METADATA), "--samples", str(samples),
                "--steps", "1", "--limit", "3", "--out", str(out)])
    assert not out.exists() and len(list(samples.glob("*/samples/*.png"))) == 12  # samples only
    suite.main(["--backbone", "tiny", "--device", "cpu", "--prompts", str(METADATA), "--samples", str(samples),
                "--steps", "1", "--geneval-repo", str(repo), "--geneval-python", sys.executable,
                "--detector-dir", str(detector), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["samples"]["written"] == 3 and result["samples"]["skipped"] == 3
    assert result["metrics"] == {**{t: 50.0 for t in gv.TAGS}, "overall": 50.0}
    assert result["results_file"] == str(samples / "results.jsonl")
    # --parse with --samples takes the seed and images per prompt from the sample folder
    again = tmp_path / "again.json"
    suite.main(["--backbone", "tiny", "--parse", str(samples / "results.jsonl"), "--samples", str(samples),
                "--seed", "7", "--out", str(again)])
    assert json.loads(again.read_text())["_meta"]["seeds"] == [0]
    with pytest.raises(SystemExit, match="needs all of"):
        suite.main(["--prompts", str(METADATA), "--samples", str(samples), "--geneval-repo", str(repo)])


def test_geneval_mini_suite(tmp_path: Path) -> None:
    from benchmarks import geneval_mini as suite

    out = tmp_path / "mini.json"
    suite.main(["--backbone", "tiny", "--device", "cpu", "--per-tag", "1", "--steps", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["metrics"]) == [*gv.TAGS, "overall"]
    assert all(0.0 <= v <= 100.0 for v in result["metrics"].values())
    assert result["metrics"]["overall"] == pytest.approx(sum(result["metrics"][t] for t in gv.TAGS) / 6)
    assert sum(c["images"] for c in result["counts"].values()) == 24
    meta = result["_meta"]
    assert meta["suite"] == "geneval_mini" and meta["task_variant"] == "GenEval-mini test"
    assert meta["prompt_set"] == "ShapesWorld test seed 0, 1 per tag" and meta["judge"] == "ShapesWorld detector"
    with Image.open(out.with_suffix(".png")) as im:
        assert im.width > 0 and im.height > 0
    page = out.with_suffix(".md").read_text()
    assert "![GenEval-mini samples (green: correct)](mini.png)" in page
    suite.main(["--report", "--out", str(out)])
    assert out.with_suffix(".md").read_text() == page
