"""The Proposer (Ask): prompt, robust parsing of K candidate questions, checks (algorithm.md §3.2–3.3).

The proposer writes K tagged blocks (format from ``prompt_templates['proposer_item']``, e.g.
``<q><target>..</target><question>..</question><options>a|b</options></q>``). Parsing never raises:
it falls back, in order, to bare question tags, to sentences ending in "?", to the first line, and
finally to a fixed generic question, and reports what it had to do in ``ProposalParse.diagnostics``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number, string
from asg.roles.answers import AUXILIARIES
from asg.roles.certificate import WH_WORDS, Certificate, CertificateConfig, certify
from asg.roles.spec import Spec, parse_spec
from asg.roles.templates import RoleTemplates
from asg.types import Completion, Prompt, SamplingParams

PARSE_SOURCES: tuple[str, ...] = ("blocks", "question_tags", "question_marks", "first_line", "fallback")
MALFORMED_SOURCES: tuple[str, ...] = ("first_line", "fallback")  # no question found: neither tags nor "?"
# tags, and chat special tokens written out as text ("<|im_end|>", "<|image_pad|>"): a question that
# kept one would be re-tokenised into a special token inside the next prompt
_TAG = re.compile(r"</?[A-Za-z_][^<>]*>|<\|[^<>]*?\|>")
_SENTENCE_Q = re.compile(r"[^?.!\n]*\?")
_STARTS = "|".join(sorted(WH_WORDS | AUXILIARIES))
_QUESTION = re.compile(rf"\b(?:{_STARTS})\b[^?.!\n]*\?", re.IGNORECASE)


def _question_sentences(text: str) -> list[str]:
    """Sentences ending in "?" in the untagged parts of ``text``, each from its wh-/auxiliary word on
    ("Here: How many ...?" gives "How many ...?"); a "?" sentence without such a word is kept whole."""
    out = []
    for segment in _TAG.split(text):
        for piece in _SENTENCE_Q.findall(segment):
            m = _QUESTION.search(piece)
            q = " ".join((m.group(0) if m else piece).split())
            if len(q.split()) >= 2:
                out.append(q)
    return out


@attrs.frozen
class ProposerConfig:
    """How the Proposer is sampled and how its output is read."""

    k: int = attrs.field(default=3, validator=number(1, 32, integer=True))  # candidate questions per image
    temperature: float = attrs.field(default=1.3, validator=number(0.0, 10.0))  # proposal sampling (§3.1)
    top_p: float = attrs.field(default=1.0, validator=number(0.0, 1.0, lo_open=True))  # nucleus mass
    max_new_tokens: int = attrs.field(default=384, validator=number(1, 100_000, integer=True))  # §3.2
    extra_temperature_max: float = attrs.field(default=3.0, validator=number(0.0, 10.0))  # GRPO extras: min(this, 2T), §3.10
    spec_pairs: int = attrs.field(default=3, validator=number(1, 8, integer=True))  # QA pairs asked for (§6.1)
    spec_temperature: float = attrs.field(default=1.3, validator=number(0.0, 10.0))  # spec sampling (§6.1)
    fallback_question: str = attrs.field(  # used when nothing parses (flagged)
        default="How many objects are in the image?", validator=string(nonempty=True)
    )
    certificate: CertificateConfig = attrs.field(
        factory=CertificateConfig, validator=attrs.validators.instance_of(CertificateConfig)
    )  # weights and threshold of the structural certificate

    @property
    def extra_temperature(self) -> float:
        """Temperature of the extra GRPO group members: min(3.0, 2·T) (§3.10)."""
        return min(self.extra_temperature_max, 2.0 * self.temperature)


@attrs.frozen
class Candidate:
    """One proposed question with the fields the proposer wrote for it (empty when missing)."""

    question: str
    target: str = ""  # the visual target it is about
    options: tuple[str, ...] = ()  # the hidden two-answer test
    source: str = attrs.field(default="blocks", validator=attrs.validators.in_(PARSE_SOURCES))
    complete: bool = False  # every field present in a closed block


@attrs.frozen
class ProposalParse:
    """What was parsed from one proposer output and how."""

    candidates: tuple[Candidate, ...]  # at least one (the fallback question when nothing parsed)
    source: str = attrs.field(validator=attrs.validators.in_(PARSE_SOURCES))  # the rule that produced them
    diagnostics: dict[str, float]  # counts: blocks, unterminated, missing fields, duplicates, dropped

    @property
    def fallback(self) -> bool:
        return self.source == "fallback"

    @property
    def malformed(self) -> bool:
        """The output held no question (only a first line or the fixed fallback was left): counted per
        step as ``malformed.proposer``; its candidates fail the certificate (§3.3)."""
        return self.source in MALFORMED_SOURCES


def _field(block: str, tags: tuple[str, str]) -> tuple[str, bool]:
    """Text of a tagged field in ``block`` and whether its closing tag was there.

    A missing closing tag ends the field at the next tag (or the block's end).
    """
    open_tag, close_tag = tags
    i = block.find(open_tag)
    if i < 0:
        return "", False
    start = i + len(open_tag)
    j = block.find(close_tag, start)
    if j >= 0:
        return block[start:j].strip(), True
    nxt = _TAG.search(block, start)
    return block[start:nxt.start() if nxt else len(block)].strip(), False


def _blocks(text: str, tags: tuple[str, str]) -> list[tuple[str, bool]]:
    """Every block opened by ``tags[0]``: (body, closed). An unclosed block ends at the next opening."""
    open_tag, close_tag = tags
    out = []
    starts = [m.start() for m in re.finditer(re.escape(open_tag), text)]
    for n, s in enumerate(starts):
        stop = starts[n + 1] if n + 1 < len(starts) else len(text)
        body = text[s + len(open_tag):stop]
        j = body.find(close_tag)
        out.append((body[:j], True) if j >= 0 else (body, False))
    return out


def _clean(text: str) -> str:
    return " ".join(_TAG.sub(" ", text).split())


def _key(question: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


def parse_candidates(text: str, templates: RoleTemplates, k: int, *, fallback_question: str) -> ProposalParse:
    """Up to ``k`` distinct candidates from a proposer output; never raises (§3.2 parsing + fallbacks)."""
    diag = {"n_blocks": 0.0, "n_unterminated": 0.0, "n_missing_question": 0.0, "n_missing_target": 0.0,
            "n_missing_options": 0.0, "n_duplicates": 0.0, "n_dropped": 0.0}
    found: list[Candidate] = []
    source = "blocks"
    for body, closed in _blocks(text, templates.item_tags):
        diag["n_blocks"] += 1
        diag["n_unterminated"] += not closed
        question, q_closed = _field(body, templates.question_tags)
        if not question:  # a block without a question field: its first "...?" sentence, if any
            sentences = _question_sentences(body)
            question, q_closed = (sentences[0] if sentences else ""), False
        target, t_closed = _field(body, templates.target_tags)
        raw_options, o_closed = _field(body, templates.options_tags)
        options = tuple(o.strip() for o in raw_options.split(templates.options_sep) if o.strip())
        diag["n_missing_question"] += not question
        diag["n_missing_target"] += not target
        diag["n_missing_options"] += len(options) < 2
        if question:
            complete = closed and q_closed and t_closed and o_closed and bool(target) and len(options) >= 2
            found.append(Candidate(_clean(question), _clean(target), options, "blocks", complete))
    if not found:
        source = "question_tags"
        q_open, q_close = templates.question_tags
        for m in re.finditer(re.escape(q_open) + r"(.*?)(?:" + re.escape(q_close) + r"|(?=<)|$)", text, re.DOTALL):
            if _clean(m.group(1)):
                found.append(Candidate(_clean(m.group(1)), source=source))
    if not found:
        source = "question_marks"
        found = [Candidate(q, source=source) for q in _question_sentences(text)]
    if not found:
        source = "first_line"
        lines = [_clean(line) for line in text.splitlines() if _clean(line)]
        found = [Candidate(lines[0], source=source)] if lines else []
    if not found:
        source = "fallback"
        found = [Candidate(fallback_question, source=source)]
    unique: list[Candidate] = []
    for c in found:
        if any(_key(c.question) == _key(u.question) for u in unique):
            diag["n_duplicates"] += 1
        else:
            unique.append(c)
    diag["n_dropped"] = float(max(0, len(unique) - k))
    diag["n_candidates"] = float(min(k, len(unique)))
    return ProposalParse(tuple(unique[:k]), source, diag)


@attrs.frozen(eq=False)
class Proposal:
    """One proposer call: its prompt, output, parsed candidates and their certificates."""

    prompt: Prompt
    completion: Completion
    parse: ProposalParse
    certificates: tuple[Certificate, ...]  # one per candidate, same order

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self.parse.candidates

    @property
    def objective_candidates(self) -> tuple[Candidate, ...]:
        """The candidates that pass the objective-question filter (§3.3)."""
        return tuple(c for c, cert in zip(self.candidates, self.certificates) if cert.objective.objective)

    @property
    def valid_candidates(self) -> tuple[Candidate, ...]:
        """The candidates whose structural certificate is valid (objective included)."""
        return tuple(c for c, cert in zip(self.candidates, self.certificates) if cert.valid)


@attrs.frozen(eq=False)
class SpecProposal:
    """One generation-spec call: its prompt, output and parsed spec (§6.1)."""

    prompt: Prompt
    completion: Completion
    spec: Spec


class Proposer:
    """Asks questions about images and writes generation specs through a backbone's proposer role."""

    role = "proposer"

    def __init__(self, config: ProposerConfig | None = None) -> None:
        self.config = config or ProposerConfig()

    def propose(
        self,
        backbone: Any,
        images: Sequence[Any],
        difficulties: str | Sequence[str],
        *,
        samples_per_image: int = 1,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> list[Proposal]:
        """``samples_per_image`` proposer outputs per image in ONE batched call, image-major order.

        ``difficulties``: the desired bucket per image (or one for all), sent as the prompt's hint.
        ``temperature`` overrides the config's (e.g. ``config.extra_temperature`` for GRPO extras).
        """
        tpl = RoleTemplates.of(backbone)
        cfg = self.config
        hints = [difficulties] * len(images) if isinstance(difficulties, str) else list(difficulties)
        if len(hints) != len(images):
            raise ValueError(f"propose got {len(images)} images but {len(hints)} difficulties")
        if samples_per_image < 1:
            raise ValueError(f"samples_per_image must be >= 1, got {samples_per_image}")
        prompts = [
            Prompt(tpl.proposer_prompt(cfg.k, d), image=im)
            for im, d in zip(images, hints) for _ in range(samples_per_image)
        ]
        sampling = SamplingParams(
            temperature=cfg.temperature if temperature is None else temperature, top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
        )
        if not prompts:
            return []
        with backbone.use_role(self.role):
            completions = backbone.generate_text(prompts, sampling, seed=seed)
        out = []
        for p, c in zip(prompts, completions):
            parsed = parse_candidates(c.text, tpl, cfg.k, fallback_question=cfg.fallback_question)
            certs = tuple(certify(x.question, x.target, x.options, cfg.certificate) for x in parsed.candidates)
            out.append(Proposal(p, c, parsed, certs))
        return out

    def write_specs(
        self,
        backbone: Any,
        images: Sequence[Any],
        *,
        captions: Sequence[str | None] | None = None,
        seed: int | None = None,
    ) -> list[SpecProposal]:
        """One generation spec per image in ONE batched call (§6.1); ``captions`` feed the fallbacks."""
        tpl = RoleTemplates.of(backbone)
        cfg = self.config
        caps = list(captions) if captions is not None else [None] * len(images)
        if len(caps) != len(images):
            raise ValueError(f"write_specs got {len(images)} images but {len(caps)} captions")
        if not images:
            return []
        prompts = [Prompt(tpl.spec_prompt(cfg.spec_pairs), image=im) for im in images]
        sampling = SamplingParams(temperature=cfg.spec_temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
        with backbone.use_role(self.role):
            completions = backbone.generate_text(prompts, sampling, seed=seed)
        return [
            SpecProposal(p, c, parse_spec(c.text, tpl, caption=cap, max_pairs=cfg.spec_pairs))
            for p, c, cap in zip(prompts, completions, caps)
        ]


__all__ = [
    "MALFORMED_SOURCES", "PARSE_SOURCES", "Candidate", "ProposalParse", "Proposal", "Proposer", "ProposerConfig", "SpecProposal",
    "parse_candidates",
]
