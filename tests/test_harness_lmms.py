"""The lmms-eval adapter (asg.harness.lmms) and the `understanding` suite, on toy tasks over ShapesWorld
scenes shipped in tests/fixtures/harness/lmms_tasks (read offline by lmms-eval's "json" builder)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lmms_eval")

from asg.errors import CapabilityError, ConfigError
from asg.harness.common import merge_images
from asg.harness.lmms import (
    MANIFEST,
    UNDERSTANDING_TASKS,
    AsgLmms,
    paper_metrics,
    resolve_tasks,
    run_lmms,
)
from asg.types import Prompt, SamplingParams
from lmms_eval.api.instance import Instance, unwrap_generation_output
from PIL import Image

TASKS = Path(__file__).parent / "fixtures" / "harness" / "lmms_tasks"
DOCS = [json.loads(line) for line in (TASKS / "shapes_vqa.jsonl").read_text().splitlines()]
LIMIT = 4
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lmms-eval's datasets cache in a temp dir (read by lmms-eval at each load)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("lmms_cache")))
        yield


@pytest.fixture(scope="module")
def tiny() -> Any:
    from asg.plugins import get_backbone_class

    return get_backbone_class("tiny").load()


@pytest.fixture(scope="module")
def toy(tiny: Any) -> tuple[dict[str, Any], list[warnings.WarningMessage]]:
    """One lmms-eval run of the four toy tasks (the first LIMIT documents) and the warnings it raised."""
    model = AsgLmms(backbone=tiny, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_lmms(model, ["asg_toy_vqa", "asg_toy_vqa_text", "asg_toy_vqa_pair", "asg_toy_vqa_mc"],
                           limit=LIMIT, include_path=TASKS, log_samples=True)
    return results, list(caught)


def image(doc: dict[str, Any]) -> Image.Image:
    return Image.open(TASKS / doc["image"]).convert("RGB")


def answer(text: str) -> str:
    """The answer of a generation cut at ``</answer>`` (what the toy task scores)."""
    return text.split("</answer>")[0].replace("<answer>", "").strip().lower()


def direct_exact_match(tiny: Any, images: list[Image.Image | None]) -> tuple[float, list[str]]:
    """Exact match of tiny's own greedy answers (solver role) to the first LIMIT toy questions."""
    from asg.evaluation import solver_prompt_text

    prompts = [Prompt(solver_prompt_text(tiny, d["question"]), image=im) for d, im in zip(DOCS[:LIMIT], images)]
    with tiny.use_role("solver"):
        texts = [c.text.split("</answer>")[0] for c in tiny.generate_text(prompts, GREEDY, return_stats=False)]
    hits = [answer(t) == d["answer"] for t, d in zip(texts, DOCS)]
    return sum(hits) / len(hits), texts


def responses(results: dict[str, Any], task: str) -> list[str]:
    return [s["filtered_resps"][0] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_generate_until_matches_the_backbone_called_directly(toy: Any, tiny: Any) -> None:
    results, _ = toy
    expected, texts = direct_exact_match(tiny, [image(d) for d in DOCS[:LIMIT]])
    assert responses(results, "asg_toy_vqa") == texts  # same prompt, greedy, cut at the stop string
    assert results["results"]["asg_toy_vqa"]["exact_match,none"] == pytest.approx(expected)
    assert results["n-samples"]["asg_toy_vqa"]["effective"] == LIMIT


def test_text_only_documents(toy: Any, tiny: Any) -> None:
    results, _ = toy
    expected, texts = direct_exact_match(tiny, [None] * LIMIT)
    assert responses(results, "asg_toy_vqa_text") == texts
    assert results["results"]["asg_toy_vqa_text"]["exact_match,none"] == pytest.approx(expected)


def test_several_images_are_tiled_into_one_with_one_warning(toy: Any, tiny: Any) -> None:
    results, caught = toy
    tiled = [merge_images([image(d), image(d)]) for d in DOCS[:LIMIT]]
    expected, texts = direct_exact_match(tiny, tiled)
    assert responses(results, "asg_toy_vqa_pair") == texts
    assert results["results"]["asg_toy_vqa_pair"]["exact_match,none"] == pytest.approx(expected)
    merged = [w for w in caught if "tiled side by side" in str(w.message)]
    assert len(merged) == 1 and "asg_toy_vqa_pair" in str(merged[0].message)


def test_multiple_choice_picks_the_most_likely_choice(toy: Any, tiny: Any) -> None:
    """lmms-eval takes the argmin of what loglikelihood returns: the adapter's negative log-likelihood
    makes that the choice the backbone finds most likely."""
    results, _ = toy
    docs = DOCS[:LIMIT]
    prompts = [Prompt(f"{d['question']} Answer with one word.", image=image(d)) for d in docs for _ in d["choices"]]
    with tiny.use_role("solver"):
        out = tiny.score(prompts, [f" {c}" for d in docs for c in d["choices"]], append_eos=False)
    logliks = iter([float(lp[m.bool()].sum()) for lp, m in zip(out.logprobs, out.mask)])
    hits = []
    for d in docs:
        ll = [next(logliks) for _ in d["choices"]]
        hits.append(max(range(len(ll)), key=ll.__getitem__) == 0)  # the true answer is choice 0
    assert results["results"]["asg_toy_vqa_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def _request(args: tuple[Any, ...], kind: str = "loglikelihood") -> Instance:
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "toy", "doc_id": args[3], "repeats": 1})


def test_loglikelihood_against_a_hand_computation(tiny: Any) -> None:
    model = AsgLmms(backbone=tiny, batch_size=2)
    model.task_dict = {"toy": {"test": DOCS}}
    doc = DOCS[1]
    context = f"{doc['question']} Answer inside <answer></answer>."
    with tiny.use_role("solver"):
        own = tiny.generate_text([Prompt(context, image=image(doc))], GREEDY, return_stats=False)[0].text
        hand = tiny.score([Prompt(context, image=image(doc))], [" purple"], append_eos=False)
    expected = -float(hand.logprobs[0][hand.mask[0].bool()].sum())

    def visual(d: dict[str, Any]) -> list[Image.Image]:
        return [image(d)]

    reqs = [_request((context, " purple", visual, 1, "toy", "test")),
            _request((context, own, visual, 1, "toy", "test")),
            _request((context, lambda d: " purple", visual, 1, "toy", "test"))]  # output_type loglikelihood
    (nll, _), (_, greedy), (nll_fn, _) = [unwrap_generation_output(r)[0] for r in model.loglikelihood(reqs)]
    assert nll == pytest.approx(expected, abs=1e-4) and nll_fn == pytest.approx(expected, abs=1e-4)
    assert greedy is True  # the backbone's own greedy continuation
    wrong = unwrap_generation_output(model.loglikelihood([_request((context, " zzz purple", visual, 1, "toy", "test"))])[0])[0]
    assert wrong[1] is False


def test_entry_point_and_string_model_args(tiny: Any) -> None:
    from lmms_eval.models import get_model
    from lmms_eval.models.registry_v2 import ModelManifest

    assert isinstance(MANIFEST, ModelManifest) and MANIFEST.model_id == "asg"
    assert get_model("asg") is AsgLmms and get_model("asg_backbone") is AsgLmms
    model = AsgLmms.create_from_arg_string("backbone=tiny,preset=None,role=none,max_new_tokens=8",
                                           {"batch_size": 3, "device": "cpu"})
    assert model.backbone.name == "tiny" and model.role is None and model.batch_size == 3 and model.max_new_tokens == 8
    assert AsgLmms(backbone=tiny).role == "solver"


def test_image_for_a_text_only_backbone_is_a_clear_error(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "supports_images_in_prompt", False)
    model = AsgLmms(backbone=tiny)
    model.task_dict = {"toy": {"test": DOCS}}
    req = _request(("What color?", {"max_new_tokens": 4}, lambda d: [image(d)], 0, "toy", "test"), "generate_until")
    with pytest.raises(CapabilityError, match=r"backbone 'tiny' does not accept images.*task 'toy'"):
        model.generate_until([req])


def test_unsupported_requests_and_options(tiny: Any) -> None:
    model = AsgLmms(backbone=tiny)
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round([])
    with pytest.raises(ConfigError, match="image_merge"):
        AsgLmms(backbone=tiny, image_merge="mosaic")
    with pytest.raises(ConfigError, match="no role 'critic'"):
        AsgLmms(backbone=tiny, role="critic")
    model.task_dict = {"toy": {"test": DOCS}}
    req = _request(("Q?", {}, lambda d: ["clip.mp4"], 0, "toy", "test"), "generate_until")
    with pytest.raises(CapabilityError, match="not an image"):
        model.generate_until([req])


def test_stop_strings_and_sampling_settings(tiny: Any) -> None:
    model = AsgLmms(backbone=tiny, max_new_tokens=7)
    sampling, until = model._sampling({"until": "</answer>", "temperature": 0.2, "do_sample": False})
    assert sampling.temperature == 0.0 and sampling.max_new_tokens == 7 and until == ["</answer>"]
    sampling, _ = model._sampling({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 3})
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (0.7, 0.9, 3)
    sampling, _ = model._sampling({"do_sample": True, "num_beams": 2})  # lmms-eval: no temperature = greedy
    assert sampling.is_greedy and sampling.max_new_tokens == 7


def test_image_merge_modes_reach_the_prompt(tiny: Any) -> None:
    """``image_merge`` picks common.merge_images' mode; identical images are kept (tiled) as given."""
    a = image(DOCS[0])
    model = AsgLmms(backbone=tiny, image_merge="first")
    model.task_dict = {"toy": {"test": DOCS}}
    assert model._image(lambda d: [a, a.copy()], 0, "toy", "test") is a
    model = AsgLmms(backbone=tiny, image_merge="error")
    model.task_dict = {"toy": {"test": DOCS}}
    with pytest.raises(CapabilityError, match="2 images"):
        model._image(lambda d: [a, a], 0, "toy", "test")
    model = AsgLmms(backbone=tiny)
    model.task_dict = {"toy": {"test": DOCS}}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        tiled = model._image(lambda d: [a, a.copy()], 0, "toy", "test")
    assert tiled.size == (2 * a.width, a.height)


def test_paper_metrics_in_the_papers_units() -> None:
    results = {"results": {
        "mmmu_val": {"alias": "mmmu_val", "mmmu_acc,none": 0.412, "mmmu_acc_stderr,none": "N/A"},
        "mme": {"mme_perception_score,none": 1500.5, "mme_cognition_score,none": 350.0},
        "mmvet": {"gpt_eval_score,none": 41.3},
        "asg_toy_vqa": {"exact_match,none": 0.5},
    }}
    assert paper_metrics(results) == pytest.approx({"MMMU": 41.2, "MM-Vet": 41.3, "MME-P": 1500.5, "MME-C": 350.0})


def test_paper_tasks_and_metric_keys_exist_in_installed_lmms_eval() -> None:
    """Each paper metric's task is defined by the installed lmms-eval with that metric key."""
    import lmms_eval
    from lmms_eval.utils import load_yaml_config

    root = Path(lmms_eval.__file__).parent / "tasks"
    for spec in UNDERSTANDING_TASKS.values():
        found = None
        for path in sorted(root.glob(f"{spec.task.split('_')[0]}*/*.yaml")):
            if re.search(rf"^task:\s*\"?{spec.task}\"?\s*$", path.read_text(), flags=re.MULTILINE):
                found = load_yaml_config(str(path), mode="simple")
                break
        assert found is not None, spec.task
        assert spec.key in [m["metric"] for m in found["metric_list"]], (spec.metric, spec.task)


def test_resolve_tasks() -> None:
    tasks, judged = resolve_tasks(["MMMU", "mme-p", "MME-C", "mmvet", "asg_toy_vqa"])
    assert tasks == ["mmmu_val", "mme", "mmvet", "asg_toy_vqa"] and judged == ["MM-Vet"]


# -- the suite -------------------------------------------------------------------------------------------
def _suite_args(*argv: str) -> argparse.Namespace:
    from benchmarks.understanding import build_parser

    return build_parser(argparse.ArgumentParser()).parse_args(list(argv))


def test_suite_judge_dependent_tasks_need_a_judge() -> None:
    from benchmarks.understanding import run

    for task in ("MMBench", "mmvet"):
        with pytest.raises(ConfigError, match=r"LLM judge.*--judge MODEL"):
            run(_suite_args("--tasks", task, "--out", "unused.json"))
    with pytest.raises(ConfigError, match=r"unknown lmms-eval task.*mmmu_vall.*close: mmmu_val"):
        run(_suite_args("--tasks", "mmmu_vall", "--include-path", str(TASKS), "--out", "unused.json"))


def test_suite_end_to_end_then_report(tmp_path: Path, toy: Any) -> None:
    from benchmarks.understanding import run

    out = tmp_path / "understanding.json"
    common = ("--include-path", str(TASKS), "--tasks", "asg_toy_vqa", "--limit", str(LIMIT), "--out", str(out),
              "--device", "cpu")
    result = run(_suite_args(*common, "--batch-size", "4"))
    saved = json.loads(out.read_text())
    meta = saved["_meta"]
    assert meta["harness"] == "lmms-eval" and meta["harness_version"] and meta["task_variant"] == "asg_toy_vqa"
    assert meta["limit"] == LIMIT and meta["seeds"] == [0] and meta["judge"] is None
    assert meta["backbone"]["name"] == "tiny" and meta["backbone"]["stage"] == "base"
    assert saved["metrics"] == {} and saved["judge_dependent"] == [] and saved["samples"] == {"asg_toy_vqa": LIMIT}
    assert saved["definitions"] == {}
    assert saved["tasks"]["asg_toy_vqa"]["exact_match"] == pytest.approx(toy[0]["results"]["asg_toy_vqa"]["exact_match,none"])
    assert result["tasks"] == saved["tasks"]
    page = out.with_suffix(".md").read_text()
    assert "not comparable with published ones" in page and "| asg_toy_vqa | exact_match |" in page
    out.with_suffix(".md").unlink()
    run(_suite_args(*common, "--report"))  # nothing is loaded or run
    assert out.with_suffix(".md").read_text() == page
    assert json.loads(out.read_text()) == saved


def test_suite_render_marks_judged_metrics() -> None:
    from benchmarks.understanding import render

    page = render({"_meta": {"backbone": {"name": "bagel", "stage": "evolved", "run": "runs/e1"}, "judge": "gpt-4o",
                             "limit": None},
                   "metrics": {"MMMU": 55.2, "MM-Vet": 60.1, "MME-P": 1650.0}, "tasks": {},
                   "judge_dependent": ["MM-Vet"], "samples": {"mmmu_val": 900},
                   "definitions": {m: {"task": t.task, "key": t.key, "unit": t.unit}
                                   for m, t in UNDERSTANDING_TASKS.items()}})
    assert "| MM-Vet † | 60.1 | % | mmvet (gpt_eval_score) |" in page and "| MME-P | 1650.0 | score |" in page
    assert "| MMMU | 55.2 | % | mmmu_val (mmmu_acc) | 900 |" in page
    assert "LLM judge (gpt-4o)" in page and "not comparable" not in page and "run `runs/e1`" in page
