"""What the lm-eval and lmms-eval adapters share (asg.harness.common), on the shipped `tiny` backbone.
Needs neither harness; CPU only, nothing downloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from asg.errors import CapabilityError, ConfigError
from asg.harness.common import (
    include_paths,
    load_named_backbone,
    local_first,
    merge_images,
    sampling_params,
    score_continuations,
    truncate_at_stops,
    unique_images,
)
from asg.plugins import get_backbone_class
from asg.shapes import render, scene_for
from asg.types import Prompt
from PIL import Image


@pytest.fixture(scope="module")
def tiny() -> Any:
    return get_backbone_class("tiny").load()


def test_imports_no_harness() -> None:
    code = ("import sys, asg.harness.common; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lm_eval', 'lmms_eval')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_named_backbone(tmp_path: Path) -> None:
    backbone = load_named_backbone("tiny")
    assert backbone.name == "tiny"
    with pytest.raises(ConfigError, match="model=.*no such directory"):
        load_named_backbone("tiny", model=tmp_path / "missing")
    with pytest.raises(ConfigError, match="run=.*no such run directory"):
        load_named_backbone("tiny", run=tmp_path / "missing")


def test_unique_images() -> None:
    red, blue = Image.new("RGB", (4, 2), "red"), Image.new("RGB", (3, 5), "blue")
    assert unique_images([red, blue, red.copy()]) == [red, blue]
    assert unique_images([red, red.convert("L")]) == [red, red.convert("L")]  # another mode is another image
    assert unique_images([]) == []


def test_merge_images() -> None:
    a, b = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (16, 32), "blue")
    tiled = merge_images([a, b])
    assert tiled.size == (64 + 32, 64)  # b scaled to the tallest height, aspect kept
    assert tiled.getpixel((10, 10)) == (255, 0, 0) and tiled.getpixel((80, 10)) == (0, 0, 255)
    assert merge_images([a, b], "first") is a and merge_images([b]) is b and merge_images([b], "error") is b
    twice = merge_images([a, a.copy()])  # identical images are tiled as given (unique_images collapses them)
    assert twice.size == (128, 64)
    gray = merge_images([Image.new("L", (2, 4), 0), Image.new("RGB", (4, 2), "red")])
    assert gray.mode == "RGB" and gray.size == (2 + 8, 4) and gray.getpixel((5, 1)) == (255, 0, 0)
    with pytest.raises(CapabilityError, match="2 images"):
        merge_images([a, b], "error")
    with pytest.raises(ConfigError, match="image_merge must be one of tile, first, error"):
        merge_images([a, b], "mosaic")
    with pytest.raises(ValueError, match="at least one image"):
        merge_images([])


def test_sampling_params() -> None:
    greedy, stops = sampling_params({"until": "Q:", "max_gen_toks": 5, "temperature": 0.7, "do_sample": False}, 9)
    assert greedy.is_greedy and greedy.max_new_tokens == 5 and stops == ["Q:"]
    assert sampling_params(None, 9)[0].max_new_tokens == 9 and sampling_params({}, 9)[1] == []
    assert sampling_params({"until": ["a", "b"]}, 9)[1] == ["a", "b"]
    assert sampling_params({"max_new_tokens": 3, "max_gen_toks": 5}, 9)[0].max_new_tokens == 3
    sampled, _ = sampling_params({"temperature": 0.7, "top_p": 0.9, "top_k": 20}, 9)
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.7, 0.9, 20)
    assert sampling_params({"temperature": 0.0, "top_k": 20}, 9)[0].top_k == 0  # greedy: no top-k
    # do_sample without a temperature: lm-eval samples at 1, lmms-eval decodes greedily
    assert sampling_params({"do_sample": True}, 9)[0].temperature == 1.0
    assert sampling_params({"do_sample": True}, 9, sample_temperature=0.0)[0].is_greedy
    assert sampling_params({}, 9)[0].is_greedy
    seen: list[list[str]] = []
    sampling_params({"num_beams": 2, "max_length": 4, "until": "\n"}, 9, on_unknown=seen.append)
    sampling_params({"until": "\n"}, 9, on_unknown=seen.append)
    assert seen == [["max_length", "num_beams"]]
    with pytest.raises(ConfigError, match="until"):
        sampling_params({"until": 3}, 9)


def test_truncate_at_stops() -> None:
    assert truncate_at_stops("a</answer>\nb", ["\n", "</answer>", ""]) == "a"
    assert truncate_at_stops("abc", []) == "abc" and truncate_at_stops("abc", ["x", ""]) == "abc"
    assert truncate_at_stops("abc", ["a"]) == ""


def test_score_continuations_by_hand(tiny: Any) -> None:
    question = "How many shapes are there? Answer inside <answer></answer>."
    prompts = [Prompt(text=question), Prompt(text=question, image=render(scene_for("test", 0, 0), 64))]
    with tiny.use_role("solver"):
        own = [c.text for c in tiny.generate_text(prompts, [sampling_params({}, 12)[0]] * 2, return_stats=False)]
        totals, greedy = score_continuations(tiny, prompts, own)
        other = own[0][:-1] + "#"  # the last character not the greedy one
        totals_other, greedy_other = score_continuations(tiny, prompts[:1], [other])
        hand = tiny.score(prompts, own, append_eos=False)
    assert totals == pytest.approx((hand.logprobs * hand.mask).sum(-1).tolist(), abs=1e-5)
    assert greedy == [True, True] and greedy_other == [False] and totals_other[0] < 0.0


def test_score_continuations_needs_logits() -> None:
    out = SimpleNamespace(logits=None, logprobs=torch.zeros(1, 2), mask=torch.ones(1, 2))
    backbone = SimpleNamespace(name="nologits", score=lambda *a, **k: out)
    with pytest.raises(CapabilityError, match="'nologits' returned no logits"):
        score_continuations(backbone, [Prompt(text="q")], ["a"])


def test_include_paths(tmp_path: Path) -> None:
    assert include_paths(None, "lm-eval") is None
    assert include_paths(tmp_path, "lm-eval") == [str(tmp_path)]
    assert include_paths([tmp_path, str(tmp_path)], "lm-eval") == [str(tmp_path)] * 2
    with pytest.raises(ConfigError, match="include_path .*missing: no such directory of lmms-eval task YAMLs"):
        include_paths([tmp_path, tmp_path / "missing"], "lmms-eval")
    (tmp_path / "task.yaml").write_text("task: x\n")
    with pytest.raises(ConfigError, match="no such directory"):
        include_paths(tmp_path / "task.yaml", "lm-eval")


def test_local_first() -> None:
    built: list[tuple[Any, bool]] = []

    def make(paths: list[str] | None, defaults: bool) -> Any:
        built.append((paths, defaults))
        return SimpleNamespace(all_tasks=["local"] + (["builtin"] if defaults else []))

    assert local_first(make, ["local"], ["d"]).all_tasks == ["local"] and built == [(["d"], False)]
    built.clear()
    assert "builtin" in local_first(make, ["local", "builtin"], ["d"]).all_tasks
    assert built == [(["d"], False), (["d"], True)]
    built.clear()
    local_first(make, ["builtin"], None)
    assert built == [(None, True)]  # no include paths: the harness's own index only
