"""Out of memory in a batched backbone call: the batch is halved and retried down to a floor, the
results are the unsplit call's (bit-identical seeds, equal greedy text, equal scores), every split is
logged and counted in the step's record, and anything that is not an out-of-memory error propagates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from asg.backbones.tiny.model import TinyBackbone
from asg.errors import ConfigError
from asg.oom import BatchOutOfMemoryError, OOMGuard, OOMStats, is_oom, run_split
from asg.shapes import write_unlabeled_folder
from asg.train.recipe import load_recipe
from asg.train.trainer import Trainer
from asg.train.ustep import understanding_step
from asg.types import Prompt, SamplingParams

OOM_ERRORS: list[Callable[[], BaseException]] = [
    lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
]
if hasattr(torch, "OutOfMemoryError"):
    OOM_ERRORS.append(lambda: torch.OutOfMemoryError("out of memory"))


def _items_call(items: list[int], k: int, error: Callable[[], BaseException], calls: list[int]) -> Callable[[int, int], list[int]]:
    """A batched call over ``items`` that runs out of memory on more than ``k`` items."""

    def call(lo: int, hi: int) -> list[int]:
        calls.append(hi - lo)
        if hi - lo > k:
            raise error()
        return [10 * x for x in items[lo:hi]]

    return call


@pytest.mark.parametrize("error", OOM_ERRORS)
def test_split_keeps_order_logs_and_counts(error: Callable[[], BaseException], caplog: pytest.LogCaptureFixture) -> None:
    """10 items, at most 3 fit: 10 → 5 + 5 → (3 + 2) + (3 + 2); the results come back in item order."""
    items, calls, stats = list(range(10)), [], OOMStats()
    with caplog.at_level(logging.WARNING, logger="asg.oom"):
        out = run_split(_items_call(items, 3, error, calls), len(items), lambda ps: [x for p in ps for x in p],
                        name="generate_text", stats=stats)
    assert out == [10 * x for x in items]
    assert calls == [10, 5, 3, 2, 5, 3, 2]
    assert stats.splits == 3 and stats.by_call == {"generate_text": 3}
    msgs = [r.getMessage() for r in caplog.records if r.name == "asg.oom"]
    assert len(msgs) == 3 and msgs[0].startswith("generate_text: out of memory on a batch of 10 item(s)")
    assert "retrying as 5 + 5 items" in msgs[0]


def test_floor_error_names_the_call_and_the_batch_size() -> None:
    """A piece no larger than the floor that still runs out of memory fails, naming call and size."""
    calls: list[int] = []
    with pytest.raises(BatchOutOfMemoryError, match=r"^score: out of memory on a batch of 1 item\(s\) \(split down from 4; floor 1") as info:
        run_split(_items_call(list(range(4)), 0, OOM_ERRORS[0], calls), 4, list, name="score")
    assert calls == [4, 2, 1] and info.value.batch_size == 1 and info.value.call == "score"
    assert is_oom(info.value.__cause__) and not is_oom(info.value)  # an outer guard does not split again
    calls.clear()
    with pytest.raises(BatchOutOfMemoryError, match=r"batch of 3 item\(s\) \(split down from 10; floor 4"):
        run_split(_items_call(list(range(10)), 2, OOM_ERRORS[1], calls), 10, list, name="generate_images", floor=4)
    assert calls == [10, 5, 3]


@pytest.mark.parametrize("error", [ValueError("bad prompt"), RuntimeError("shape mismatch"), KeyError("x")])
def test_other_errors_are_not_swallowed(error: BaseException) -> None:
    """Only out-of-memory errors split; anything else propagates unchanged from the first attempt."""
    stats, calls = OOMStats(), []

    def call(lo: int, hi: int) -> list[int]:
        calls.append(hi - lo)
        raise error

    with pytest.raises(type(error)) as info:
        run_split(call, 8, list, name="generate_text", stats=stats)
    assert info.value is error and calls == [8] and stats.splits == 0


def test_floor_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASG_OOM_FLOOR sets the floor (default 1); a value that is not an integer >= 1 is a ConfigError."""
    monkeypatch.delenv("ASG_OOM_FLOOR", raising=False)
    assert OOMGuard().floor == 1
    monkeypatch.setenv("ASG_OOM_FLOOR", "4")
    assert OOMGuard().floor == 4 and OOMGuard(floor=2).floor == 2
    for bad in ("0", "two"):
        monkeypatch.setenv("ASG_OOM_FLOOR", bad)
        with pytest.raises(ConfigError, match="ASG_OOM_FLOOR must be an integer >= 1"):
            OOMGuard()


# -- on the tiny backbone --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> TinyBackbone:
    return TinyBackbone.load()


def _limit(fn: Callable[..., Any], k: int, sizes: list[int]) -> Callable[..., Any]:
    """``fn`` that raises torch's out-of-memory error when given more than ``k`` items."""

    def limited(items: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(items))
        if len(items) > k:
            raise OOM_ERRORS[0]()
        return fn(items, *args, **kwargs)

    return limited


def test_forced_split_equals_the_unsplit_call_on_tiny(tiny: TinyBackbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """generate_images (seed + i per image), greedy generate_text and score give the unsplit results
    when every call is split down to single items."""
    images = [Image.new("RGB", (64, 64), (40 * i, 120, 200 - 40 * i)) for i in range(3)]
    prompts = [Prompt("What colour is the shape?" + " Look closely." * i, image=im) for i, im in enumerate(images)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=4)
    texts = ["a red square", "two blue circles on the left", "a green triangle"]
    with tiny.use_role("solver"):
        ref_text = tiny.generate_text(prompts, greedy, seed=5)
        ref_score = tiny.score(prompts, [c.token_ids for c in ref_text], return_logits=True)
    ref_images = tiny.generate_images(texts, seed=9, num_steps=2)

    guard, sizes = OOMGuard(floor=1), []
    for name in ("generate_text", "score", "generate_images"):
        monkeypatch.setattr(tiny, name, _limit(getattr(tiny, name), 1, sizes))
    bb = guard.wrap(tiny)
    with bb.use_role("solver"):
        text = bb.generate_text(prompts, greedy, seed=5)
        score = bb.score(prompts, [c.token_ids for c in ref_text], return_logits=True)
    imgs = bb.generate_images(texts, seed=9, num_steps=2)
    assert guard.stats.by_call == {"generate_text": 2, "score": 2, "generate_images": 2}
    assert sizes == [3, 2, 1, 1, 1] * 3

    assert [(c.text, c.token_ids, c.finish_reason) for c in text] == [(c.text, c.token_ids, c.finish_reason) for c in ref_text]
    for a, b in zip(text, ref_text):
        torch.testing.assert_close(a.stats.entropy, b.stats.entropy, atol=1e-4, rtol=1e-4)
    m = ref_score.mask
    assert torch.equal(score.mask, m)
    torch.testing.assert_close(score.logprobs[m], ref_score.logprobs[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score.entropy, ref_score.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score.logits[m], ref_score.logits[m], atol=1e-3, rtol=1e-4)
    # the piece starting at item i is seeded seed + i: the same noise, so the same image up to rounding
    assert [g.seed for g in imgs] == [g.seed for g in ref_images] == [9, 10, 11]
    for a, b in zip(imgs, ref_images):
        assert torch.equal(a.trace.noise, b.trace.noise)
        torch.testing.assert_close(a.trace.latents, b.trace.latents, atol=1e-4, rtol=1e-4)


def test_a_step_splits_and_records_it(tiny: TinyBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real U-step whose generate_text and score fit at most 2 items completes and logs ``oom_splits``
    (one per call that did not fit; ASG_OOM_FLOOR=2 still lets those pieces split)."""
    write_unlabeled_folder(tmp_path, n=1, seed=3, split="pool")
    image = Image.open(next(tmp_path.glob("*.png"))).convert("RGB")
    recipe = load_recipe("demo", ["proposer.ask.max_new_tokens=24", "solver.sample.max_new_tokens=6", "solver.sample.n=4",
                                  "solver.questions_per_step=1", "proposer.update=false"])
    trainer = Trainer(tiny, recipe, pool=None, run=None)
    sizes: list[int] = []
    for name in ("generate_text", "score"):
        monkeypatch.setattr(tiny, name, _limit(getattr(tiny, name), 2, sizes))
    monkeypatch.setenv("ASG_OOM_FLOOR", "2")
    m, rollout = understanding_step(trainer, image, 1)
    assert m["oom_splits"] > 0 and max(sizes) > 2
    assert m["oom_splits"] == sum(1 for s in sizes if s > 2)
    assert len(rollout["candidates"]) == len(rollout["spot_ste"])


def test_the_recipe_floor_wins_over_the_environment(tiny: TinyBackbone, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.oom_floor`` = 8: a call of at most 8 items that runs out of memory fails at once (no split),
    whatever ASG_OOM_FLOOR says; 0 (the default) leaves the floor to the environment."""
    write_unlabeled_folder(tmp_path, n=1, seed=3, split="pool")
    image = Image.open(next(tmp_path.glob("*.png"))).convert("RGB")
    sets = ["proposer.ask.max_new_tokens=24", "solver.sample.max_new_tokens=6", "solver.sample.n=4",
            "solver.questions_per_step=1", "proposer.update=false"]
    assert load_recipe("demo").run.oom_floor == 0
    trainer = Trainer(tiny, load_recipe("demo", [*sets, "run.oom_floor=8"]), pool=None, run=None)
    sizes: list[int] = []
    monkeypatch.setattr(tiny, "generate_text", _limit(tiny.generate_text, 2, sizes))
    monkeypatch.setenv("ASG_OOM_FLOOR", "1")
    with pytest.raises(BatchOutOfMemoryError, match=r"floor 8"):
        understanding_step(trainer, image, 1)
    assert 2 < sizes[-1] <= 8  # the call that ran out was not split: the last try is the whole batch
    with pytest.raises(Exception, match="run.oom_floor"):
        load_recipe("demo", ["run.oom_floor=-1"])
