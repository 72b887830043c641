"""Role classes talk to the backbone protocol in batched calls (a recording fake backbone; no model)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from asg.backbones.tiny.templates import TEMPLATES
from asg.roles import (
    GateConfig,
    Generator,
    PPSLadder,
    Proposer,
    ProposerConfig,
    RoleTemplates,
    Solver,
    SolverConfig,
    gate_specs,
    parse_spec,
)
from asg.types import ROLES, Completion, FlowTrace, GeneratedImage, Prompt, SamplingParams, ScoreOutput, TokenStats

TPL = RoleTemplates.from_mapping(TEMPLATES)


class FakeTokenizer:
    """Tags are one token ('<answer>'), or three ('<', 'answer', '>') with ``split_tags``."""

    def __init__(self, split_tags: bool = False) -> None:
        self.pattern = re.compile(r"[<>/]|[^\s<>/]+|\s+" if split_tags else r"<[^<>]+>|\s+|[^\s<]+")
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        for piece in self.pattern.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.pieces)
                self.pieces.append(piece)
        return [self.vocab[p] for p in self.pattern.findall(text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


class FakeBackbone:
    """Implements the protocol calls the roles use; records every call and the role active in it.

    Each completion's step entropies are 0.0, 0.1, 0.2, ... so a slice reveals where it was taken.
    """

    name = "fake"
    generation_kind = "flow"
    supports_images_in_prompt = True
    roles = ROLES
    prompt_templates = TEMPLATES

    def __init__(self, respond: Callable[[Prompt, SamplingParams], str], *, decode: bool = True, split_tags: bool = False) -> None:
        self.respond = respond
        self._tok = FakeTokenizer(split_tags)
        self.tokenizer = self._tok if decode else None
        self.calls: list[dict] = []
        self.active: str | None = None

    @contextmanager
    def use_role(self, role):
        previous, self.active = self.active, role
        try:
            yield
        finally:
            self.active = previous

    def generate_text(self, prompts, sampling, *, seed=None, return_stats=True):
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        self.calls.append({"fn": "generate_text", "role": self.active, "prompts": list(prompts), "sampling": params, "seed": seed})
        out = []
        for p, s in zip(prompts, params):
            text = self.respond(p, s)
            ids = self._tok.encode(text)
            ent = torch.arange(len(ids) + 1, dtype=torch.float32) / 10  # one row per step incl. EOS
            z = torch.zeros_like(ent)
            stats = TokenStats(entropy=ent, logprob=-ent, logsumexp=z, top1=z.long(), top1_logit=z, top2_logit=z)
            out.append(Completion(text=text, token_ids=ids, stats=stats, finish_reason="stop", sampling=s))
        return out

    def score(self, prompts, completions, *, grad=False, return_logits=False, append_eos=True):
        self.calls.append({"fn": "score", "role": self.active, "prompts": list(prompts), "completions": list(completions), "append_eos": append_eos})
        lengths = [len(self._tok.encode(c)) + int(append_eos) for c in completions]
        T = max(lengths)
        mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
        z = torch.zeros(len(lengths), T)
        return ScoreOutput(logprobs=z, entropy=z, mask=mask)

    def generate_images(self, prompts, *, seed=None, num_steps=None, guidance=None):
        self.calls.append({"fn": "generate_images", "role": self.active, "prompts": list(prompts), "seed": seed,
                           "num_steps": num_steps, "guidance": guidance})
        trace = FlowTrace(noise=torch.zeros(1, 2, 2), latents=torch.zeros(1, 2, 2), num_steps=1, guidance=1.0)
        return [GeneratedImage(image=Image.new("RGB", (4, 4)), prompt=p, seed=i, trace=trace) for i, p in enumerate(prompts)]


def count_solver(prompt: Prompt, s: SamplingParams) -> str:
    """Greedy: '3' after a preamble; hot samples (T ≥ 2) say 4, cool ones 'three'; colours: 'dark red'."""
    if "What color" in prompt.text:  # (focus hint 5 mentions colours too)
        return "<answer>dark red</answer>"
    if s.is_greedy:
        return "I count them. <answer>3</answer>"
    return "<answer>4</answer>" if s.temperature >= 2.0 else "<answer>three</answer>"


IMAGES = [Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")]
QUESTIONS = ["How many circles are there?", "What color is the circle?"]


# -- Solver ------------------------------------------------------------------------------------------
def test_solver_issues_all_n_answers_of_all_questions_in_one_call() -> None:
    """2 questions × 7 answers = ONE generate_text call of 14 rows under the solver role, each row with
    its PPS prompt (framing i + hint i) and its ladder sampling (greedy for i = 0)."""
    fake = FakeBackbone(count_solver)
    Solver().answer(fake, IMAGES, QUESTIONS, seed=5)
    gen = [c for c in fake.calls if c["fn"] == "generate_text"]
    assert len(gen) == 1 and len(fake.calls) == 1
    call = gen[0]
    assert call["role"] == "solver" and call["seed"] == 5 and len(call["prompts"]) == 14
    ladder = PPSLadder()
    for q in range(2):
        for i in range(7):
            row = q * 7 + i
            assert call["sampling"][row] == ladder.sampling(i, 96)
            assert call["prompts"][row].text == TPL.solver_prompt(QUESTIONS[q], i)
            assert call["prompts"][row].image == IMAGES[q]
    assert call["prompts"][3].text == ("Answer directly. Focus on left and right. How many circles are there? "
                                       "Answer inside <answer></answer>.")


def test_solver_returns_typed_labels_prompts_and_completions_per_question() -> None:
    """Labels are typed ('three' → '3'); every sample keeps the prompt it was generated under."""
    fake = FakeBackbone(count_solver)
    counts, colours = Solver().answer(fake, IMAGES, QUESTIONS)
    # T per sample 1..6: 2.5, 0.9, 2.1, 1.3, 1.7, 0.7 → '4' when T ≥ 2, else 'three'
    assert counts.labels == ("3", "4", "3", "4", "3", "3", "3")
    assert counts.qtype == "count" and colours.labels == ("dark red",) * 7
    assert counts.prompts == tuple(fake.calls[0]["prompts"][:7])
    assert [c.sampling.temperature for c in counts.completions] == [0.0, 2.5, 0.9, 2.1, 1.3, 1.7, 0.7]
    assert [s.pps_index for s in counts.samples] == list(range(7))


def test_greedy_answer_entropies_start_after_the_answer_tag() -> None:
    """Greedy 'I count them. <answer>3</answer>' has tokens I,␣,count,␣,them.,␣,<answer>,3,...: the
    answer is token 7, whose step entropy is 0.7; 'dark red' spans tokens 1..3 (0.1, 0.2, 0.3)."""
    fake = FakeBackbone(count_solver)
    counts, colours = Solver().answer(fake, IMAGES, QUESTIONS)
    assert counts.greedy.answer_tokens == (7, 8)
    torch.testing.assert_close(counts.ste_entropies(), torch.tensor([0.7]))
    assert colours.greedy.answer_tokens == (1, 4)
    torch.testing.assert_close(colours.ste_entropies(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(colours.ste_entropies(k=2), torch.tensor([0.1, 0.2]))


def test_multi_token_answer_tag_is_skipped() -> None:
    """With '<answer>' as 3 tokens (<, answer, >) the greedy '3' is token 9, entropy 0.9."""
    fake = FakeBackbone(count_solver, split_tags=True)
    counts, _ = Solver().answer(fake, IMAGES, QUESTIONS)
    assert counts.greedy.answer_tokens == (9, 10)
    torch.testing.assert_close(counts.ste_entropies(), torch.tensor([0.9]))


def test_without_a_decoder_the_answer_offset_comes_from_one_batched_score_call() -> None:
    """A backbone without a tokenizer: one score call (2 rows per greedy answer, no EOS) gives the same spans."""
    fake = FakeBackbone(count_solver, decode=False)
    counts, colours = Solver().answer(fake, IMAGES, QUESTIONS)
    scores = [c for c in fake.calls if c["fn"] == "score"]
    assert [c["fn"] for c in fake.calls] == ["generate_text", "score"]
    assert len(scores[0]["prompts"]) == 4 and scores[0]["append_eos"] is False and scores[0]["role"] == "solver"
    assert counts.greedy.answer_tokens == (7, 8) and colours.greedy.answer_tokens == (1, 4)


def test_missing_tag_leaves_the_span_unknown_and_the_window_at_the_start() -> None:
    """Without an answer tag the span is None and the STE window is the first tokens."""
    fake = FakeBackbone(lambda p, s: "three circles")
    (counts,) = Solver(SolverConfig(n=1)).answer(fake, IMAGES[:1], QUESTIONS[:1])
    assert counts.greedy.answer_tokens is None and counts.labels == ("3",)
    torch.testing.assert_close(counts.ste_entropies(k=2), torch.tensor([0.0, 0.1]))


def test_greedy_pass_can_run_first_and_be_reused() -> None:
    """greedy() is one call of Q greedy rows; answer(greedy=...) adds ONE call of Q×6 perturbed rows."""
    fake = FakeBackbone(count_solver)
    solver = Solver()
    greedy = solver.greedy(fake, IMAGES, QUESTIONS)
    results = solver.answer(fake, IMAGES, QUESTIONS, greedy=greedy)
    first, second = fake.calls
    assert len(first["prompts"]) == 2 and all(s.is_greedy for s in first["sampling"])
    assert len(second["prompts"]) == 12 and not any(s.is_greedy for s in second["sampling"])
    assert results[0].samples[0] is greedy[0] and len(results[0].samples) == 7
    assert results[0].labels == ("3", "4", "3", "4", "3", "3", "3")


def test_selected_pps_indices_only() -> None:
    """indices=(2, 3, 4) (the §3.10 extras) samples exactly those framings and ladder steps."""
    fake = FakeBackbone(count_solver)
    (res,) = Solver().answer(fake, IMAGES[:1], QUESTIONS[:1], indices=(2, 3, 4))
    params = [(s.temperature, s.top_p) for s in fake.calls[0]["sampling"]]
    assert params == [(0.9, 0.86), (2.1, 0.44), (1.3, 0.72)]
    assert res.greedy is None and res.ste_entropies() is None


def test_solver_rejects_mismatched_inputs() -> None:
    """One image per question; PPS indices must be distinct."""
    fake = FakeBackbone(count_solver)
    with pytest.raises(ValueError, match="got 1 images but 2 questions"):
        Solver().answer(fake, IMAGES[:1], QUESTIONS)
    with pytest.raises(ValueError, match="distinct non-negative"):
        Solver().answer(fake, IMAGES[:1], QUESTIONS[:1], indices=(1, 1))


# -- Proposer ----------------------------------------------------------------------------------------
def proposer_output(prompt: Prompt, s: SamplingParams) -> str:
    if prompt.text.startswith("Write a drawing prompt"):
        return ("<prompt>a red circle</prompt><qa><question>What color is the circle?</question>"
                "<expected>red</expected></qa><qa><question>How many circles are there?</question><expected>1</expected></qa>")
    return ("<q><target>red circles</target><question>How many red circles are there?</question><options>1|2</options></q>"
            "<q><target>shapes</target><question>How many shapes are there?</question><options>2|3</options></q>")


def test_proposer_batches_every_image_and_sample_in_one_call() -> None:
    """2 images × 2 samples = ONE call of 4 rows under the proposer role, image-major, with the
    difficulty hint per image and T = 1.3, top-p 1, 384 tokens."""
    fake = FakeBackbone(proposer_output)
    proposals = Proposer().propose(fake, IMAGES, ["hard", "medium"], samples_per_image=2, seed=3)
    (call,) = fake.calls
    assert call["role"] == "proposer" and call["seed"] == 3
    assert [p.text for p in call["prompts"]] == ["Ask 3 hard questions about the image."] * 2 + ["Ask 3 medium questions about the image."] * 2
    assert [p.image for p in call["prompts"]] == [IMAGES[0], IMAGES[0], IMAGES[1], IMAGES[1]]
    assert call["sampling"][0] == SamplingParams(temperature=1.3, top_p=1.0, max_new_tokens=384)
    assert len(proposals) == 4
    first = proposals[0]
    assert [c.question for c in first.candidates] == ["How many red circles are there?", "How many shapes are there?"]
    assert [c.valid for c in first.certificates] == [True, False]  # 'shapes' is a generic target
    assert first.valid_candidates == first.candidates[:1] and first.objective_candidates == first.candidates


def test_proposer_extras_use_the_raised_temperature() -> None:
    """GRPO extras are sampled at min(3.0, 2·1.3) = 2.6."""
    fake = FakeBackbone(proposer_output)
    proposer = Proposer(ProposerConfig())
    proposer.propose(fake, IMAGES[:1], "medium", samples_per_image=2, temperature=proposer.config.extra_temperature)
    assert [s.temperature for s in fake.calls[0]["sampling"]] == [2.6, 2.6]


def test_write_specs_batches_and_parses() -> None:
    """Specs of all images in ONE proposer call; each parsed with its quality."""
    fake = FakeBackbone(proposer_output)
    specs = Proposer().write_specs(fake, IMAGES, captions=["a red circle.", None])
    (call,) = fake.calls
    assert call["role"] == "proposer" and len(call["prompts"]) == 2
    assert call["prompts"][0].text == "Write a drawing prompt for the image and 3 questions that check it."
    assert specs[0].spec.prompt == "a red circle" and len(specs[0].spec.qa) == 2
    assert specs[0].spec.quality == pytest.approx(1.0)


# -- Generator and the spec gate ---------------------------------------------------------------------
def test_generator_draws_L_candidates_per_prompt_in_one_call() -> None:
    """2 prompts × L = 3 → ONE generate_images call of 6 under the generator role, grouped back per prompt."""
    fake = FakeBackbone(count_solver)
    groups = Generator().generate(fake, ["a red circle", "two squares"], seed=11)
    (call,) = fake.calls
    assert call["role"] == "generator" and call["seed"] == 11
    assert call["prompts"] == ["a red circle"] * 3 + ["two squares"] * 3
    assert [len(g) for g in groups] == [3, 3] and groups[1][0].prompt == "two squares"
    Generator().generate(fake, [parse_spec("<prompt>a blue square</prompt>", TPL)])
    assert fake.calls[-1]["prompts"] == ["a blue square"] * 3  # a Spec contributes its prompt


def _spec(*pairs: tuple[str, str]):
    text = "<prompt>a scene</prompt>" + "".join(
        f"<qa><question>{q}</question><expected>{e}</expected></qa>" for q, e in pairs)
    return parse_spec(text, TPL)


def gate_solver(prompt: Prompt, s: SamplingParams) -> str:
    """On the real image the circle is red and there are 2 of them."""
    return "<answer>red</answer>" if "What color" in prompt.text else "<answer>2</answer>"


def test_gate_accepts_specs_the_solver_agrees_with_on_the_real_image() -> None:
    """s_q = 0.7·match + 0.3·majority fraction (2 agreeing samples → 1):
    spec A both match → 1.0 (accepted); spec B colour wrong → (0.3 + 1.0)/2 = 0.65 (accepted);
    spec C one pair → few_pairs, not asked, alignment 0."""
    fake = FakeBackbone(gate_solver)
    a = _spec(("What color is the circle?", "red"), ("How many circles are there?", "2"))
    b = _spec(("What color is the circle?", "blue"), ("How many circles are there?", "two"))
    c = _spec(("What color is the circle?", "red"))
    results = gate_specs(Solver(), fake, IMAGES + IMAGES[:1], [a, b, c], config=GateConfig(samples=2))
    (call,) = fake.calls  # one solver call: 4 questions × 2 samples
    assert call["role"] == "solver" and len(call["prompts"]) == 8
    assert results[0].accepted and results[0].alignment == pytest.approx(1.0)
    assert results[1].accepted and results[1].scores == pytest.approx((0.3, 1.0))
    assert results[1].alignment == pytest.approx(0.65)
    assert not results[2].accepted and results[2].reasons == ("few_pairs", "low_alignment")
    assert results[2].answers == ()


def test_gate_rejects_disagreement_and_can_be_forced_to_score_everything() -> None:
    """Both answers wrong → 0.3 < 0.55 rejected; force=True asks the Solver about pre-gated specs too."""
    fake = FakeBackbone(gate_solver)
    wrong = _spec(("What color is the circle?", "blue"), ("How many circles are there?", "5"))
    single = _spec(("What color is the circle?", "red"))
    results = gate_specs(Solver(), fake, IMAGES, [wrong, single], force=True)
    assert len(fake.calls[0]["prompts"]) == 6  # 3 questions × 2 samples
    assert results[0].reasons == ("low_alignment",) and results[0].alignment == pytest.approx(0.3)
    assert results[1].alignment == pytest.approx(1.0) and results[1].reasons == ("few_pairs",)
    assert results[0].selection_score == pytest.approx(0.65 * results[0].quality + 0.35 * 0.3)
