"""Malformed model output never crashes a step: real U- and G-steps of `tiny` whose generate_text
returns garbage (nothing, only special tokens, random tokens, a length-cut run, broken tags) complete,
count what was malformed in the step's record and penalise it as the recipe says."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import torch
from PIL import Image

from asg.backbones.tiny.model import TinyBackbone
from asg.backbones.tiny.templates import TEMPLATES
from asg.backbones.tiny.tokenizer import BOS, EOS, IMAGE, PAD
from asg.rewards import ProposerCase, proposer_rewards
from asg.roles import RoleTemplates, parse_answer, parse_candidates, parse_spec
from asg.shapes import write_unlabeled_folder
from asg.train.gstep import generation_step
from asg.train.recipe import load_recipe
from asg.train.trainer import Trainer
from asg.train.ustep import understanding_step
from asg.types import Completion, SamplingParams, TokenStats

KINDS = ("empty", "special", "random", "long", "broken_tags")
EMPTY_TEXT = ("empty", "special")  # kinds whose decoded text is ""
FAST = ["proposer.ask.max_new_tokens=64", "solver.sample.max_new_tokens=16", "generator.caption_max_new_tokens=16",
        "generator.generate.num_steps=2"]
GOOD_PROPOSER = ("<q><target>red square</target><question>How many red squares are in the image?</question>"
                 "<options>1|2</options></q>")
GOOD_SPEC = ("<prompt>a red square above a blue circle</prompt><qa><question>How many red squares are there?"
             "</question><expected>1</expected></qa><qa><question>Is there a blue circle?</question>"
             "<expected>yes</expected></qa>")


@pytest.fixture(scope="module")
def tiny() -> TinyBackbone:
    return TinyBackbone.load()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image.Image:
    folder = tmp_path_factory.mktemp("pool")
    write_unlabeled_folder(folder, n=1, seed=3, split="pool")
    return Image.open(next(folder.glob("*.png"))).convert("RGB")


class Garbage:
    """A stand-in for ``tiny.generate_text``: garbage of one kind for ``roles``, a fixed text for the roles
    in ``fixed``, the real model otherwise. Completions are what a sampler could return (tokens within
    ``max_new_tokens``, text decoded without special tokens, one statistics row per step)."""

    def __init__(self, tiny: TinyBackbone, kind: str, roles: tuple[str, ...], fixed: dict[str, str] | None = None) -> None:
        self.tiny, self.kind, self.roles, self.fixed = tiny, kind, roles, fixed or {}
        self.real = tiny.generate_text
        self.rng = random.Random(0)
        tok = tiny.tokenizer
        self.bos = tok.convert_tokens_to_ids(BOS)
        special = {tok.convert_tokens_to_ids(t) for t in (BOS, EOS, IMAGE, PAD)}
        # byte-level pieces with no tag, question mark or special token in them: text that parses to nothing
        self.ordinary = [i for i in range(len(tok)) if i not in special and not set(tok.decode([i])) & set("<>?|")
                         and tok.decode([i]).strip()]
        self.caption = RoleTemplates.of(tiny).caption
        self.outputs: Counter[str] = Counter()  # completions returned per role (captions apart)

    def _ids(self, sp: SamplingParams) -> tuple[list[int], str]:
        if self.kind == "empty":
            return [], "stop"
        if self.kind == "special":
            return [self.bos] * min(4, sp.max_new_tokens), "stop"
        if self.kind == "random":
            return [self.rng.choice(self.ordinary) for _ in range(min(12, sp.max_new_tokens))], "stop"
        if self.kind == "long":
            return [self.rng.choice(self.ordinary) for _ in range(sp.max_new_tokens)], "length"
        ids = self.tiny.tokenizer.encode("<q><question></question></q><answer>", add_special_tokens=False)
        return ids[:sp.max_new_tokens], "stop"

    def __call__(self, prompts: Any, sampling: Any, *, seed: int | None = None, return_stats: bool = True) -> list[Completion]:
        role = self.tiny.adapters.active
        if role not in self.roles and role not in self.fixed:
            return self.real(prompts, sampling, seed=seed, return_stats=return_stats)
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        out = []
        for p, sp in zip(prompts, params):
            if role in self.fixed:
                ids, finish = self.tiny.tokenizer.encode(self.fixed[role], add_special_tokens=False), "stop"
            else:
                ids, finish = self._ids(sp)
            n = len(ids) + (finish == "stop")
            stats = TokenStats(torch.full((n,), 0.7), torch.full((n,), -1.5), torch.zeros(n), torch.zeros(n, dtype=torch.long),
                               torch.ones(n), torch.zeros(n)) if return_stats else None
            text = self.tiny.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(Completion(text=text, token_ids=ids, stats=stats, finish_reason=finish, sampling=sp))
            self.outputs["caption" if p.text == self.caption else role] += 1
        return out


def _trainer(tiny: TinyBackbone, *overrides: str) -> Trainer:
    return Trainer(tiny, load_recipe("demo", [*FAST, *overrides]), pool=None, run=None)


def _unparsed_reward(tr: Trainer) -> float:
    return proposer_rewards([ProposerCase.unparsed(d_ste=0.0)], tr.recipe.rewards.proposer, tr.components("proposer")).values[0]


@pytest.mark.parametrize("kind", KINDS)
def test_u_step_with_garbage_from_every_role(tiny: TinyBackbone, image: Image.Image, kind: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No question parses from any Proposer output: each is counted, the group gets the unparsed
    Proposer reward, the Solver has nothing to train on; every spot-check answer is counted too."""
    fake = Garbage(tiny, kind, ("proposer", "solver"))
    monkeypatch.setattr(tiny, "generate_text", fake)
    tr = _trainer(tiny)
    m, rollout = understanding_step(tr, image, 1)
    assert fake.outputs["proposer"] == 1 + tr.recipe.proposer.extra_samples
    assert m["malformed.proposer"] == fake.outputs["proposer"]
    assert m["malformed.solver"] == fake.outputs["solver"] > 0
    assert rollout["question"] is None and m["rejected"] == 1.0 and m["solver.skip_reason"] == "no_valid_question"
    assert m["proposer.reward"] == _unparsed_reward(tr) < 0
    assert m["proposer.group_rewards"] == [_unparsed_reward(tr)] * fake.outputs["proposer"]
    assert m["oom_splits"] == 0 and isinstance(m["proposer.stepped"], bool)


@pytest.mark.parametrize("kind", KINDS)
def test_u_step_with_garbage_answers(tiny: TinyBackbone, image: Image.Image, kind: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid question, garbage answers: the step votes, rewards and updates; every answer is counted."""
    fake = Garbage(tiny, kind, ("solver",), fixed={"proposer": GOOD_PROPOSER})
    monkeypatch.setattr(tiny, "generate_text", fake)
    m, rollout = understanding_step(_trainer(tiny), image, 1)
    assert rollout["question"] == "How many red squares are in the image?"
    assert m["malformed.proposer"] == 0 and m["malformed.solver"] == fake.outputs["solver"] > 0
    assert len(rollout["solver_rewards"]) == 7 and all(isinstance(r, float) for r in rollout["solver_rewards"])
    assert isinstance(m["solver.stepped"], bool) and isinstance(m["proposer.stepped"], bool)


def test_answer_in_the_wrong_format_is_penalised(tiny: TinyBackbone, image: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same answer ("2") with and without its tag: same votes, and each untagged sample's reward is
    lower by exactly the non-canonical penalty (§3.7), weights being 1 for a unanimous vote."""
    rewards, counts = {}, {}
    for answer in ("<answer>2</answer>", "2"):
        fake = Garbage(tiny, "empty", (), fixed={"proposer": GOOD_PROPOSER, "solver": answer})
        monkeypatch.setattr(tiny, "generate_text", fake)
        tr = _trainer(tiny, "solver.update=false", "proposer.update=false")
        m, rollout = understanding_step(tr, image, 1)
        assert rollout["labels"] == ["2"] * 7
        rewards[answer], counts[answer] = rollout["solver_rewards"], m["malformed.solver"]
    penalty = tr.recipe.rewards.solver.non_canonical_penalty
    assert counts == {"<answer>2</answer>": 0, "2": fake.outputs["solver"]}
    assert rewards["2"] == pytest.approx([r - penalty for r in rewards["<answer>2</answer>"]])


@pytest.mark.parametrize("kind", KINDS)
def test_g_step_with_garbage_from_every_role(tiny: TinyBackbone, image: Image.Image, kind: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Specs that hold nothing are counted and score quality 0, so the generator does not train on them."""
    fake = Garbage(tiny, kind, ("proposer", "solver"))
    monkeypatch.setattr(tiny, "generate_text", fake)
    tr = _trainer(tiny)
    m, rollout, images = generation_step(tr, image, 4)
    assert fake.outputs["proposer"] == tr.recipe.generator.spec_attempts
    assert m["malformed.proposer"] == fake.outputs["proposer"]
    assert m["malformed.caption"] == (kind in EMPTY_TEXT)
    assert m["generator.spec_quality"] == 0.0 and m["generator.skip_reason"] == "spec:low_quality" and images == []
    assert rollout["prompt"].strip() and m["oom_splits"] == 0


@pytest.mark.parametrize("kind", ["special", "long"])
def test_g_step_judges_garbage_answers_with_open_gates(tiny: TinyBackbone, image: Image.Image, kind: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A good spec, garbage captions and answers, every gate open: candidates are drawn, judged and
    trained on; empty captions (source + one per candidate) and every answer are counted."""
    fake = Garbage(tiny, kind, ("solver",), fixed={"proposer": GOOD_SPEC})
    monkeypatch.setattr(tiny, "generate_text", fake)
    tr = _trainer(tiny, "generator.spec_attempts=1", "generator.min_spec_quality=0.0", "generator.min_qa=0")
    m, rollout, images = generation_step(tr, image, 4)
    L = tr.recipe.generator.generate.candidates
    assert len(images) == L and len(rollout["rewards"]) == L
    assert m["malformed.proposer"] == 0 and m["malformed.solver"] == fake.outputs["solver"] > 0
    assert fake.outputs["caption"] == 1 + L and m["malformed.caption"] == (1 + L if kind in EMPTY_TEXT else 0)
    assert isinstance(m["generator.stepped"], bool) and m["oom_splits"] == 0


def test_parsers_flag_malformed_output_and_drop_special_tokens() -> None:
    """Answers without a complete, non-empty tag, Proposer outputs without a question and specs without
    a prompt or QA are flagged; special tokens written out as text never reach a question or a prompt."""
    tpl = RoleTemplates.from_mapping(TEMPLATES)
    flags = {t: parse_answer(t, "How many squares?").malformed for t in ("<answer>2</answer>", "2", "<answer></answer>", "<answer>2", "")}
    assert flags == {"<answer>2</answer>": False, "2": True, "<answer></answer>": True, "<answer>2": True, "": True}
    assert not parse_candidates(GOOD_PROPOSER, tpl, 3, fallback_question="How?").malformed
    for text in ("", "just some words", "<q><question></question></q>"):
        assert parse_candidates(text, tpl, 3, fallback_question="How many?").malformed, text
    got = parse_candidates("<q><target>square</target><question>How many <|image_pad|>squares are there?<|im_end|>"
                           "</question><options>1|2</options></q>", tpl, 3, fallback_question="How?")
    assert got.candidates[0].question == "How many squares are there?"
    assert not parse_spec(GOOD_SPEC, tpl).malformed
    assert parse_spec("", tpl).malformed and parse_spec("<prompt>a red square</prompt>", tpl).malformed
    assert "<|" not in parse_spec("<prompt>a red <|vision_start|> square</prompt>", tpl).prompt
