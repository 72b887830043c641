"""The lm-eval adapter (asg.harness.lm) and the `text` benchmark suite, on the shipped `tiny` backbone and
toy local tasks (tests/fixtures/harness/lm_tasks): lm-eval's numbers must equal what the backbone gives
when called directly. CPU only, nothing downloaded."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np
import pytest
from asg.errors import CapabilityError, ConfigError
from asg.harness.common import truncate_at_stops
from asg.harness.lm import AsgLM, run_lm_eval, strip_image_placeholders
from asg.plugins import get_backbone_class
from asg.shapes import render, scene_for
from asg.types import Prompt, SamplingParams
from lm_eval.api.instance import Instance

TASKS = Path(__file__).resolve().parent / "fixtures" / "harness" / "lm_tasks"
LIMIT = 4
SOLVER = "{question} Answer inside <answer></answer>."


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines() if line.strip()]


def _req(kind: str, *args: Any) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def _greedy(backbone: Any, prompts: list[Prompt], n: int = 16) -> list[str]:
    with backbone.use_role("solver"):
        outs = backbone.generate_text(prompts, SamplingParams(temperature=0.0, max_new_tokens=n), return_stats=False)
    return [truncate_at_stops(c.text, ["\n"]) for c in outs]


def _sum_logprobs(backbone: Any, prompts: list[Prompt], replies: list[str]) -> list[float]:
    with backbone.use_role("solver"):
        out = backbone.score(prompts, replies, append_eos=False)
    return out.sequence_logprob("sum").tolist()


class Spy:
    """A backbone that records the prompts it is asked to answer; ``overrides`` replace attributes."""

    def __init__(self, inner: Any, **overrides: Any) -> None:
        self._inner = inner
        self.prompts: list[Prompt] = []
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate_text(self, prompts: Any, sampling: Any, **kw: Any) -> Any:
        self.prompts += list(prompts)
        return self._inner.generate_text(prompts, sampling, **kw)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return get_backbone_class("tiny").load()


@pytest.fixture(scope="module")
def lm(tiny: Any) -> AsgLM:
    return AsgLM(backbone=tiny, batch_size=3)


@pytest.fixture(scope="module")
def evaluated(lm: AsgLM) -> dict[str, Any]:
    return run_lm_eval(lm, ["asg_toy_mc", "asg_toy_gen", "asg_toy_vqa"], limit=LIMIT, include_path=TASKS,
                       log_samples=True)


def test_registered_with_lm_eval() -> None:
    from lm_eval.api.registry import get_model

    assert get_model("asg") is AsgLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models stay reachable


def test_built_from_names_and_clear_errors(tiny: Any, tmp_path: Path) -> None:
    lm = AsgLM.create_from_arg_string("backbone=tiny,batch_size=2", {"batch_size": None, "device": None})
    assert lm.backbone.name == "tiny" and lm.batch_size == 2 and lm.role == "solver"
    assert AsgLM(backbone=tiny, role="none").role is None
    with pytest.raises(ConfigError, match="no such directory"):
        AsgLM(backbone="tiny", model=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no role 'critic'"):
        AsgLM(backbone=tiny, role="critic")
    with pytest.raises(ConfigError, match="only apply when backbone is a name"):
        AsgLM(backbone=tiny, model=tmp_path)


def test_multiple_choice_accuracy_equals_direct_scoring(tiny: Any, evaluated: dict[str, Any]) -> None:
    docs = _jsonl("mc.jsonl")[:LIMIT]
    correct = []
    for doc in docs:
        prompts = [Prompt(text=SOLVER.format(question=doc["question"]))] * len(doc["choices"])
        lls = _sum_logprobs(tiny, prompts, doc["choices"])
        correct.append(int(np.argmax(lls)) == doc["gold"])
        logged = next(s for s in evaluated["samples"]["asg_toy_mc"] if s["doc"]["question"] == doc["question"])
        assert [r[0][0] for r in logged["resps"]] == pytest.approx(lls, abs=1e-4)
    assert evaluated["results"]["asg_toy_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    assert evaluated["n-samples"]["asg_toy_mc"]["effective"] == LIMIT


def test_exact_match_equals_direct_generation(tiny: Any, evaluated: dict[str, Any]) -> None:
    docs = _jsonl("gen.jsonl")[:LIMIT]
    replies = _greedy(tiny, [Prompt(text=SOLVER.format(question=d["question"])) for d in docs])
    expected = np.mean([r == f"<answer>{d['answer']}</answer>" for r, d in zip(replies, docs)])
    assert evaluated["results"]["asg_toy_gen"]["exact_match,none"] == pytest.approx(expected, abs=1e-12)
    logged = {s["doc"]["question"]: s["resps"][0][0] for s in evaluated["samples"]["asg_toy_gen"]}
    assert [logged[d["question"]] for d in docs] == replies


def test_image_task_equals_direct_generation(tiny: Any, evaluated: dict[str, Any]) -> None:
    docs = _jsonl("vqa.jsonl")[:LIMIT]
    prompts = [Prompt(text=SOLVER.format(question=d["question"]), image=render(scene_for(d["split"], d["seed"], d["index"]), 64))
               for d in docs]
    replies = _greedy(tiny, prompts)
    expected = np.mean([r == f"<answer>{d['answer']}</answer>" for r, d in zip(replies, docs)])
    assert evaluated["results"]["asg_toy_vqa"]["exact_match,none"] == pytest.approx(expected, abs=1e-12)
    assert expected > 0  # the shipped tiny answers some of these; the images did reach it


def test_loglikelihood_by_hand(tiny: Any, lm: AsgLM) -> None:
    context = SOLVER.format(question="How many red circles are there?")
    (own,) = _greedy(tiny, [Prompt(text=context)])
    # a continuation that leaves the greedy path at its first token (without an image the base's own
    # reply need not be an answer at all)
    other = "<answer>3</answer>" if own.startswith("<answer>2") else "<answer>2</answer>"
    reqs = [_req("loglikelihood", context, own), _req("loglikelihood", context, other), _req("loglikelihood", context, "")]
    (ll_own, greedy_own), (ll_other, greedy_other), empty = lm.loglikelihood(reqs)
    with tiny.use_role("solver"):
        out = tiny.score([Prompt(text=context)] * 2, [own, other], append_eos=False)
    assert [ll_own, ll_other] == pytest.approx((out.logprobs * out.mask).sum(-1).tolist(), abs=1e-5)
    assert greedy_own is True and greedy_other is False and empty == (0.0, True)
    rolling = lm.loglikelihood_rolling([_req("loglikelihood_rolling", ""), _req("loglikelihood_rolling", own)])
    assert rolling[0] == 0.0
    assert rolling[1] == pytest.approx(_sum_logprobs(tiny, [Prompt(text="")], [own])[0], abs=1e-5)


def test_image_request_reaches_the_backbone(tiny: Any, caplog: pytest.LogCaptureFixture) -> None:
    spy = Spy(tiny)
    lm = AsgLM(backbone=spy)
    image, other = render(scene_for("test", 0, 0), 64), render(scene_for("test", 0, 1), 64)
    question = SOLVER.format(question="How many shapes are there?")
    kwargs = {"until": ["\n"], "max_gen_toks": 16, "do_sample": False, "temperature": 0.0}
    (reply,) = lm.generate_until([_req("generate_until", f"<image>\n{question}", kwargs, {"visual": [image]})])
    assert spy.prompts[-1].text == question and spy.prompts[-1].image is image
    assert reply == _greedy(tiny, [Prompt(text=question, image=image)])[0]
    ((ll, _),) = lm.loglikelihood([_req("loglikelihood", f"<image>\n{question}", "<answer>4</answer>", {"visual": image})])
    assert ll == pytest.approx(_sum_logprobs(tiny, [Prompt(text=question, image=image)], ["<answer>4</answer>"])[0], abs=1e-5)
    # several images (one of them twice): tiled once side by side, with one warning
    with caplog.at_level(logging.WARNING, logger="asg.harness.lm"):
        for _ in range(2):
            lm.generate_until([_req("generate_until", f"<image> <image> {question} <image>", kwargs,
                                    {"visual": [image, other, image.copy()]})])
    tiled = spy.prompts[-1].image
    assert tiled.size == (128, 64) and spy.prompts[-1].text == question
    assert tiled.crop((64, 0, 128, 64)).tobytes() == other.tobytes()
    assert sum("tiled" in r.getMessage() for r in caplog.records) == 1
    # a backbone without image input is told so, by name
    blind = AsgLM(backbone=Spy(tiny, supports_images_in_prompt=False, name="textonly"))
    with pytest.raises(CapabilityError, match="'textonly'"):
        blind.generate_until([_req("generate_until", f"<image>{question}", kwargs, {"visual": image})])


def test_request_helpers(lm: AsgLM, caplog: pytest.LogCaptureFixture) -> None:
    assert strip_image_placeholders("<image>\nWhat is it?") == "What is it?"
    assert strip_image_placeholders("Compare <image> and <image>.\n(A) x") == "Compare and .\n(A) x"
    greedy, stops = lm.sampling({"until": "Q:", "max_gen_toks": 5, "temperature": 0.7, "do_sample": False})
    assert greedy.is_greedy and greedy.max_new_tokens == 5 and stops == ["Q:"]
    sampled, stops = lm.sampling({"do_sample": True, "top_p": 0.9})  # lm-eval: do_sample alone = temperature 1
    assert sampled.temperature == 1.0 and sampled.top_p == 0.9 and sampled.max_new_tokens == lm.max_new_tokens
    assert stops == []
    with caplog.at_level(logging.WARNING, logger="asg.harness.lm"):  # unknown arguments: one warning per set
        for _ in range(2):
            assert lm.sampling({"num_beams": 4, "until": ["\n"]})[1] == ["\n"]
    assert sum("['num_beams'] are not supported" in r.getMessage() for r in caplog.records) == 1


def _suite_args(*argv: str) -> argparse.Namespace:
    from benchmarks import text

    parser = argparse.ArgumentParser()
    text.build_parser(parser)
    return parser.parse_args(list(argv))


def test_text_suite_end_to_end_and_report(tmp_path: Path) -> None:
    from benchmarks import text

    out = tmp_path / "text.json"
    argv = ["--tasks", "asg_toy_mc", "asg_toy_vqa", "--include-path", str(TASKS), "--limit", "3", "--device", "cpu",
            "--out", str(out)]
    text.run(_suite_args(*argv))
    result = json.loads(out.read_text())
    meta = result["_meta"]
    assert meta["harness"] == "lm-eval" and meta["harness_version"] and meta["limit"] == 3 and meta["seeds"] == [0]
    assert meta["task_variant"] == "asg_toy_mc asg_toy_vqa" and meta["prompt_set"] == "lm-eval task defaults, 0-shot"
    assert meta["judge"] == "none" and meta["backbone"]["stage"] == "base"
    assert result["metrics"] == {}  # no MMMU in this run
    assert set(result["tasks"]) == {"asg_toy_mc", "asg_toy_vqa"} and result["n_samples"]["asg_toy_mc"] == 3
    assert 0.0 <= result["tasks"]["asg_toy_mc"]["acc"] <= 1.0 and "acc_stderr" in result["tasks"]["asg_toy_mc"]
    page = out.with_suffix(".md").read_text()
    assert "| asg_toy_vqa | exact_match |" in page and "limit 3" in page
    out.with_suffix(".md").unlink()
    text.run(_suite_args(*argv, "--report"))
    assert out.with_suffix(".md").read_text() == page


def test_text_render_names_mmmu() -> None:
    from benchmarks import text

    lm_eval_results = {"results": {"mmmu_val_art": {"alias": "art", "acc,none": 0.25, "acc_stderr,none": "N/A"}},
                       "groups": {"mmmu_val": {"alias": "mmmu_val", "acc,none": 0.3125, "acc_stderr,none": 0.02}}}
    tasks = text.task_metrics(lm_eval_results)
    assert tasks == {"mmmu_val_art": {"acc": 0.25}, "mmmu_val": {"acc": 0.3125, "acc_stderr": 0.02}}
    assert text.headline(tasks) == {"MMMU": 31.25}
    page = text.render({"_meta": {"limit": None}, "metrics": text.headline(tasks), "tasks": tasks})
    assert "**MMMU** 31.2" in page and "| mmmu_val | acc | 0.3125 ± 0.0200 |" in page and "smoke run" not in page
