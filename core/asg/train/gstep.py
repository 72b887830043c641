"""The generation step (G-step, algorithm.md §6): spec, candidates, internal evaluation, update.

For one real image:

1. the Solver captions it (§6.1.1); the Proposer writes a generation spec — a text-to-image prompt and
   up to 3 QA pairs — and the Solver gates it by answering the QA on the real image (up to
   ``spec_attempts`` tries; the best attempt is kept when none passes, §6.1.6);
2. the Generator draws L = 3 candidates for the spec prompt (one batched call, §6.2);
3. each candidate is scored (§6.3, §11): QA fidelity in reference-answer mode (the Solver's majority
   answers on the candidate vs. its answers on the real image), cycle consistency from the backbone's
   own embeddings (its caption ↔ the prompt, the image ↔ the prompt), leave-one-out set diversity and
   the yes/no contradiction penalty, combined 0.65 / 0.20 / 0.10 / −0.20 × spec quality;
4. the generator update depends on ``backbone.generation_kind``: flow/diffusion → reward-weighted
   flow matching on the real image under the spec prompt and/or the advantage-weighted candidates
   (§6.4); autoregressive → a clipped group-relative step on the candidates' exact image-token
   log-probabilities, KL to the reference (§5.2).

Reliability: every backbone call of the step goes through an :class:`asg.oom.OOMGuard` (a batch
that runs out of memory is split and retried; ``oom_splits`` counts the splits), and malformed
model output is counted, never raised on: ``malformed.caption`` (empty captions: the spec falls back
to a generic prompt, the cycle score sees an empty caption), ``malformed.proposer`` (spec outputs
without a prompt or without a QA pair: spec quality 0 when nothing parses, so the generator does not
train on it), ``malformed.solver`` (answers without a complete, non-empty answer tag: they miss the
reference answer in QA fidelity).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import torch

from asg.errors import CapabilityError
from asg.oom import OOMGuard
from asg.rewards import (
    GenerationCase,
    contradiction,
    cycle_consistency_from_embeddings,
    diversity,
    generation_rewards,
    image_features,
    qa_fidelity,
    vote,
)
from asg.roles import Generator, Proposer, RoleTemplates, Solver, gate_specs
from asg.train.updater import UpdateResult
from asg.train.ustep import malformed_answers
from asg.types import Prompt, SamplingParams
from asg.updates import flow_batch, flow_loss, group_advantages, grpo_loss

SOURCE_CAPTION_TEMPERATURE = 0.8  # clip(1.3, 0.2, 0.8) in the reference (§6.1.1)


def _captions(bb: Any, images: list[Any], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
    """One caption per image from the Solver role, in one batched call."""
    tpl = RoleTemplates.of(bb)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    with bb.use_role("solver"):
        out = bb.generate_text([Prompt(tpl.caption, image=im) for im in images], sampling, seed=seed,
                               return_stats=False)
    return [c.text.strip() for c in out]


@attrs.frozen
class GatedSpec:
    """The spec a G-step generates from: the source caption, the chosen spec output, its gate on the real
    image, how many attempts it took and the malformed outputs counted on the way."""

    caption: str
    proposal: Any  # asg.roles.proposer.SpecProposal
    gate: Any  # asg.roles.generator.GateResult
    attempts: int
    malformed: dict[str, int]


def write_gated_spec(bb: Any, image: Any, recipe: Any, seed: Callable[[str], int]) -> GatedSpec:
    """Step 1 of a G-step (§6.1): the Solver captions ``image``, the Proposer writes a spec and the Solver
    gates it on ``image``, up to ``generator.spec_attempts`` times; the first accepted attempt is kept,
    else the one with the best selection score. ``seed(tag)`` gives each call its seed."""
    g = recipe.generator
    solver, proposer = Solver(recipe.solver.sample), Proposer(recipe.proposer.ask)
    malformed = {"malformed.caption": 0, "malformed.proposer": 0, "malformed.solver": 0}
    caption = _captions(bb, [image], max_new_tokens=g.caption_max_new_tokens, temperature=SOURCE_CAPTION_TEMPERATURE,
                        seed=seed("caption"))[0]
    malformed["malformed.caption"] += not caption
    best = None
    for attempt in range(g.spec_attempts):
        proposal = proposer.write_specs(bb, [image], captions=[caption], seed=seed(f"spec{attempt}"))[0]
        gate = gate_specs(solver, bb, [image], [proposal.spec], config=g.gate, force=attempt == g.spec_attempts - 1,
                          seed=seed(f"gate{attempt}"))[0]
        malformed["malformed.proposer"] += proposal.spec.malformed
        malformed["malformed.solver"] += malformed_answers(s for a in gate.answers for s in a.samples)
        if best is None or gate.accepted or gate.selection_score > best[1].selection_score:
            best = (proposal, gate)
        if gate.accepted:
            break
    assert best is not None
    return GatedSpec(caption, best[0], best[1], attempt + 1, malformed)


def judge_candidates(bb: Any, image: Any, spec: Any, gate: Any, candidates: list[Any], recipe: Any,
                     seed: Callable[[str], int]) -> tuple[list[str], list[list[list[str]]], int]:
    """The Solver's answers behind QA fidelity (§6.3, reference-answer mode): the majority label of each
    spec question on the real ``image`` (the gate's answers, or fresh ones when the gate asked nothing),
    and the vote labels of each question on each candidate image, ``[candidate][question][sample]``.
    Also returns how many of the new answers were malformed."""
    solver = Solver(recipe.solver.sample)
    samples = recipe.generator.gate.samples
    questions = [p.question for p in spec.qa]
    bad = 0
    reference_answers = list(gate.answers)
    if not reference_answers:
        reference_answers = solver.answer(bb, [image] * len(questions), questions, n=samples, seed=seed("reference"))
        bad += malformed_answers(s for a in reference_answers for s in a.samples)
    reference = [vote(a.labels).majority for a in reference_answers]
    rows = [(c, q) for c in candidates for q in questions]
    answered = solver.answer(bb, [r[0] for r in rows], [r[1] for r in rows], n=samples, seed=seed("judge"))
    bad += malformed_answers(s for a in answered for s in a.samples)
    generated = [[list(answered[l * len(questions) + j].labels) for j in range(len(questions))]
                 for l in range(len(candidates))]
    return reference, generated, bad


UPDATE_ORDER = ("generator",)  # the roles a G-step updates, in order (see asg.train.ustep.UPDATE_ORDER)


def generation_step(tr: Any, image: Any, step: int) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Run one G-step on ``image``; returns (metrics record, rollout record, candidate images).

    Backbone calls that run out of memory are split (``oom_splits`` in the record, :mod:`asg.oom`)."""
    guard = OOMGuard.for_recipe(tr.recipe)
    m, rollout, images = _generation_step(tr, guard.wrap(tr.backbone), image, step)
    m["oom_splits"] = guard.stats.splits
    return m, rollout, images


def _generation_step(tr: Any, bb: Any, image: Any, step: int) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    recipe = tr.recipe
    g = recipe.generator
    generator = Generator(g.generate)
    m: dict[str, Any] = {"malformed.caption": 0, "malformed.proposer": 0, "malformed.solver": 0}

    # 1. spec with the Solver's gate on the real image
    seed = functools.partial(tr.seed_for, step)  # seed(tag): this step's seed for one call
    chosen = write_gated_spec(bb, image, recipe, seed)
    caption, proposal, gate = chosen.caption, chosen.proposal, chosen.gate
    for k, v in chosen.malformed.items():
        m[k] += v
    spec = proposal.spec
    m.update({"generator.spec_quality": spec.quality, "generator.spec_alignment": gate.alignment,
              "generator.spec_accepted": float(gate.accepted), "generator.spec_attempts": chosen.attempts,
              "generator.n_qa": len(spec.qa)})
    rollout: dict[str, Any] = {"caption": caption, "spec_output": proposal.completion.text, "prompt": spec.prompt,
                               "qa": [[p.question, p.expected] for p in spec.qa], "gate_reasons": list(gate.reasons)}
    if spec.quality < g.min_spec_quality or len(spec.qa) < g.min_qa:
        reason = "spec:low_quality" if spec.quality < g.min_spec_quality else "spec:few_qa"
        result = tr.updaters["generator"].skip(reason) if g.update else UpdateResult.skipped("disabled")
        result.record_into(m, "generator")
        return m, rollout, []

    # 2. L candidates
    cands = list(generator.generate(bb, [spec], seed=seed("generate"))[0])

    # 3. internal evaluation
    reference, generated, bad = judge_candidates(bb, image, spec, gate, [c.image for c in cands], recipe, seed)
    m["malformed.solver"] += bad
    rcfg = recipe.rewards
    fid = qa_fidelity(generated, reference, rcfg.fidelity)
    ctr = contradiction(generated, reference)
    cycle_caps = _captions(bb, [c.image for c in cands], max_new_tokens=g.caption_max_new_tokens, temperature=0.0,
                           seed=seed("cycle"))
    m["malformed.caption"] += sum(not c for c in cycle_caps)
    text_emb = bb.embed_text([spec.prompt, *cycle_caps])  # (1 + L, D), base model
    img_emb = bb.embed_image([c.image for c in cands])  # (L, D)
    cyc = cycle_consistency_from_embeddings(text_emb[0], text_emb[1:], img_emb, rcfg.cycle)
    feats = [image_features(c.image, rcfg.diversity) for c in cands]
    div = diversity([f[0] for f in feats], [f[1] for f in feats], rcfg.diversity)
    cases = [GenerationCase(qa_fidelity=_unit(fid.values[i]), cycle_consistency=_unit(cyc.values[i]),
                            diversity=_unit(div.values[i]), contradiction=_unit(ctr.values[i]),
                            spec_quality=spec.quality) for i in range(len(cands))]
    rewards = generation_rewards(cases, rcfg.generation, tr.components("generator")).values
    m.update({"generator.reward_mean": sum(rewards) / len(rewards), "generator.reward_best": max(rewards),
              "generator.qa_fidelity": _mean(fid.values), "generator.cycle_consistency": _mean(cyc.values),
              "generator.diversity": _mean(div.values), "generator.contradiction": _mean(ctr.values)})
    rollout.update({"reference_answers": reference, "candidate_answers": generated, "cycle_captions": cycle_caps,
                    "rewards": rewards, "qa_fidelity": fid.values, "cycle_consistency": cyc.values,
                    "diversity": div.values, "contradiction": ctr.values})

    # 4. update
    if not g.update:
        result = UpdateResult.skipped("disabled")
    elif bb.generation_kind in ("flow", "diffusion"):
        result = _flow_update(tr, step, spec.prompt, image, cands, rewards)
    elif bb.generation_kind == "autoregressive":
        result = _token_update(tr, spec.prompt, cands, rewards, bb=bb)
    else:
        raise CapabilityError(f"backbone {bb.name!r} declares generation_kind={bb.generation_kind!r}; "
                              "asg trains 'flow', 'diffusion' or 'autoregressive' generators")
    result.record_into(m, "generator")
    return m, rollout, [c.image for c in cands]


def _unit(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _flow_update(tr: Any, step: int, prompt: str, image: Any, cands: list[Any], rewards: list[float]) -> UpdateResult:
    """Reward-weighted flow matching (§6.4) through the generator adapter and head (quirk 7)."""
    upd = tr.updaters["generator"]
    batch, diag = flow_batch([prompt], [image], [cands], [rewards], tr.recipe.generator.flow)
    if len(batch) == 0:
        return upd.skip("no_positive_weight", **diag)
    loss, ldiag = flow_loss(tr.backbone, batch, seed=tr.seed_for(step, "flow"))
    return upd.apply(loss, diagnostics={**diag, **{k: v for k, v in ldiag.items() if k != "loss"}})


def _token_update(tr: Any, prompt: str, cands: list[Any], rewards: list[float], *, bb: Any = None) -> UpdateResult:
    """Group-relative step on exact per-sample image-token log-probs (§5.2; quirk 8); ``bb``: default ``tr.backbone``."""
    upd = tr.updaters["generator"]
    bb = tr.backbone if bb is None else bb
    traces = [c.trace for c in cands]
    prompts = [prompt] * len(cands)
    with bb.use_role(None), torch.no_grad():
        ref = bb.image_token_logprobs(prompts, traces)  # (L,)
    with bb.use_role("generator"):
        logp = bb.image_token_logprobs(prompts, traces)  # (L,), grad
    old = torch.stack([t.logprobs.sum() for t in traces]).to(logp.dtype)
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), tr.recipe.proposer.grpo)
    loss, diag = grpo_loss(logp, old, adv, ref_logprobs=ref, beta=upd.beta, config=tr.recipe.proposer.grpo)
    return upd.apply(loss, kl_mean=diag["kl"], diagnostics={"clip_fraction": diag["clip_fraction"]})
