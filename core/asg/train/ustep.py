"""The understanding step (U-step, algorithm.md §3): Ask, spot-check, Solve, reward, update.

For one image:

1. the Proposer writes K candidate questions (member 0 of its GRPO group) and ``extra_samples``
   more outputs at a higher temperature (members 1…), each in one batched call;
2. one greedy Solver pass per candidate measures its Solver Token Entropy (STE, §4); the pick is the
   highest-STE candidate among the valid, objective, non-easy ones (§3.4, simplified: no shaping);
3. the Solver answers the pick N = 7 times under Prompt-Perturbed Sampling (the greedy spot-check
   answer is sample 0; the 6 perturbed samples come from one batched call, §3.5);
4. the vote gives H_sc, the difficulty bucket, the Solver's and the Proposer's rewards (§3.7, §3.8);
5. the Solver takes one REINFORCE + KL step over the N samples, each trained under the prompt it was
   generated with (§3.9, quirk 2); the Proposer takes one clipped group-relative step (§3.10).

With ``solver.questions_per_step = q > 1`` (an asg extension; the reference solves the pick only) the
next q − 1 valid, objective candidates of the same Proposer output are answered in the same call and
join the Solver's update when their own gate passes; the difficulty state and the Proposer's reward
still see the pick alone.

Each extra group member is scored like member 0 but with 1 greedy + 3 perturbed Solver answers
(its own STE included, so every member of the group is on the same reward scale — a deviation
from the reference, whose extras had no STE term).

Reliability: every backbone call of the step goes through an :class:`asg.oom.OOMGuard` (a batch
that runs out of memory is split and retried; ``oom_splits`` counts the splits), and malformed
model output is counted, never raised on: ``malformed.proposer`` (outputs with no question in
them: penalised as unparsed), ``malformed.solver`` (answers without a complete, non-empty answer
tag: non-canonical / low-info penalties, §3.7).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from asg.oom import OOMGuard
from asg.rewards import (
    ProposerCase,
    SolverQuestion,
    bucket_of,
    proposer_rewards,
    solver_rewards,
    solver_token_entropy,
    vote,
)
from asg.roles import Proposal, Proposer, Solver, SolverAnswers, SolverSample
from asg.roles.scene_vote import SceneLabel, scene_vote_labels
from asg.roles.templates import RoleTemplates
from asg.train.policy import mean_kl, score_policy
from asg.train.updater import UpdateResult
from asg.types import Prompt
from asg.updates import group_advantages, grpo_loss, reinforce_loss

EXTRA_INDICES = (0, 2, 3, 4)  # greedy + PPS samples 2-4 for the extra group members (§3.10)
ALL_EASY_STE = 0.05  # "all candidates easy" also needs the best spot-check STE below this (§3.4)


def _ste_raw(answers_or_sample: Any, cfg: Any) -> float:
    ent = answers_or_sample.answer_entropies(cfg.first_k)
    if ent is None or len(ent) == 0:
        return 0.0
    return solver_token_entropy(ent, answer_start=0, config=cfg).raw


def _pick(proposal: Proposal, raws: list[float], spot: list[str], desired: str) -> int | None:
    """Index of the chosen candidate (§3.4): valid ∧ objective ∧ non-easy first, then looser tiers."""
    certs = proposal.certificates
    tiers = [
        [i for i, c in enumerate(certs) if c.valid and c.objective.objective and spot[i] != "easy"],
        [i for i, c in enumerate(certs) if c.valid and c.objective.objective],
        [i for i, c in enumerate(certs) if c.valid],
    ]
    for tier in tiers:
        if tier:
            return max(tier, key=lambda i: _score(raws, spot, desired, i))
    return None


def _score(raws: list[float], spot: list[str], desired: str, i: int) -> tuple[float, float]:
    """The §3.4 selection key of candidate ``i``: floored STE plus the bonus for the desired bucket, then raw STE."""
    return max(0.10, raws[i]) + (0.06 if spot[i] == desired else 0.0), raws[i]


def _extra_questions(proposal: Proposal, raws: list[float], spot: list[str], desired: str, pick: int, k: int) -> list[int]:
    """Up to ``k`` more candidates for the Solver (``solver.questions_per_step`` − 1): the valid, objective
    ones other than the pick, non-easy first, ranked by the pick's own key (§3.4)."""
    if k <= 0:
        return []
    rest = [i for i, c in enumerate(proposal.certificates) if i != pick and c.valid and c.objective.objective]
    rest.sort(key=lambda i: (spot[i] != "easy", *_score(raws, spot, desired, i)), reverse=True)
    return rest[:k]


def _question_case(answers: SolverAnswers, state: Any, rcfg: Any, *, rejected: bool) -> tuple[Any, Any, SolverQuestion, bool]:
    votes = vote(answers.labels, rcfg.consistency)
    difficulty = bucket_of(votes, state.threshold, rcfg.difficulty)
    parsed = [s.answer for s in answers.samples]
    majority_sample = next(p for p in parsed if p.label == votes.majority)
    low_info_majority = majority_sample.low_info or sum(p.low_info for p in parsed) >= len(parsed) / 2
    question = SolverQuestion(
        votes=votes, difficulty=difficulty,
        pre_answer_words=tuple(p.extraction.words_before for p in parsed),
        non_canonical=tuple(p.non_canonical for p in parsed), low_info=tuple(p.low_info for p in parsed),
        low_info_majority=low_info_majority, rejected=rejected, qtype=parsed[0].qtype,
    )
    return votes, difficulty, question, low_info_majority


def malformed_answers(samples: Any) -> int:
    """How many Solver samples have no complete, non-empty answer tag (``ParsedAnswer.malformed``)."""
    return sum(s.answer.malformed for s in samples)


# the order in which a U-step takes its roles' update decisions; each decision is one gradient all-reduce
# with several ranks, so a rank that abandons the step (Trainer._abandon_step) skips them in this order
UPDATE_ORDER = ("solver", "proposer")


def understanding_step(tr: Any, image: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one U-step on ``image``; returns (metrics record, rollout record).

    Backbone calls that run out of memory are split (``oom_splits`` in the record, :mod:`asg.oom`)."""
    guard = OOMGuard.for_recipe(tr.recipe)
    m, rollout = _understanding_step(tr, guard.wrap(tr.backbone), image, step)
    m["oom_splits"] = guard.stats.splits
    return m, rollout


def _understanding_step(tr: Any, bb: Any, image: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    recipe, st = tr.recipe, tr.state
    rcfg = recipe.rewards
    proposer, solver = Proposer(recipe.proposer.ask), Solver(recipe.solver.sample)
    rng = random.Random(tr.seed_for(step, "hint"))
    desired = st.target.hint(rng)
    m: dict[str, Any] = {"difficulty.desired": desired}

    # 1. Ask: member 0 and the extras, one call each (different temperatures)
    main = proposer.propose(bb, [image], desired, seed=tr.seed_for(step, "propose"))[0]
    extras: list[Proposal] = []
    if recipe.proposer.update and recipe.proposer.extra_samples:
        extras = proposer.propose(bb, [image], desired, samples_per_image=recipe.proposer.extra_samples,
                                  temperature=recipe.proposer.ask.extra_temperature, seed=tr.seed_for(step, "extras"))
    m.update({"proposer.n_candidates": len(main.candidates), "proposer.n_valid": len(main.valid_candidates),
              "proposer.parse_fallback": float(main.parse.fallback),
              "malformed.proposer": sum(p.parse.malformed for p in [main, *extras])})

    # 2. Spot-check every candidate with one greedy Solver pass (one batched call)
    questions = [c.question for c in main.candidates]
    spot = solver.greedy(bb, [image] * len(questions), questions, seed=tr.seed_for(step, "spot"))
    m["malformed.solver"] = malformed_answers(spot)
    raws = [_ste_raw(s, rcfg.ste) for s in spot]
    spot_buckets = [st.ste.spot_bucket(st.ste.quantile(r)) for r in raws]
    pick = _pick(main, raws, spot_buckets, desired)
    # §3.4: every candidate easy *and* even the best one nearly certain
    all_easy = bool(spot_buckets) and all(b == "easy" for b in spot_buckets) and max(raws) < ALL_EASY_STE
    m["proposer.all_candidates_easy"] = float(all_easy)

    rollout: dict[str, Any] = {"proposer_output": main.completion.text, "candidates": questions,
                               "spot_ste": raws, "spot_buckets": spot_buckets, "desired": desired}
    if pick is None:  # nothing certifiable: the Proposer is penalised, the Solver has nothing to learn from
        cases = [ProposerCase.unparsed(d_ste=0.0)]
        member0 = proposer_rewards(cases, rcfg.proposer, tr.components("proposer"))
        m.update({"proposer.reward": member0.values[0], "rejected": 1.0})
        rollout.update({"question": None, "proposer_reward": member0.values[0]})
        _scene_vote_extra_updates(tr, bb, step, m, rollout)
        solver_result = tr.updaters["solver"].skip("no_valid_question") if recipe.solver.update else UpdateResult.skipped("disabled")
        prop_result = _proposer_update(tr, bb, step, image, [main, *extras], [member0.values[0]], extras_solver=solver, m=m)
        solver_result.record_into(m, "solver")
        prop_result.record_into(m, "proposer")
        return m, rollout

    chosen = main.candidates[pick]
    cert = main.certificates[pick]
    extra = (_extra_questions(main, raws, spot_buckets, desired, pick, recipe.solver.questions_per_step - 1)
             if recipe.solver.update else [])
    # 3. Solve: reuse the spot-check answers as greedy sample 0, six PPS samples per question, one call
    solved = [pick, *extra]
    all_answers = solver.answer(bb, [image] * len(solved), [main.candidates[k].question for k in solved],
                                greedy=[spot[k] for k in solved], seed=tr.seed_for(step, "solve"))
    answers = all_answers[0]
    m["malformed.solver"] += malformed_answers(_new_samples(all_answers))
    rejected = not cert.objective.objective
    votes, difficulty, squestion, low_info_majority = _question_case(answers, st, rcfg, rejected=rejected)
    st.threshold.update(votes.h_sc)
    st.target.observe(difficulty.bucket)
    d_ste = float(st.ste.update(raws[pick]))  # the pick's STE joins the window (§3.6)

    # 4. Rewards
    case = ProposerCase(d_ste=d_ste, votes=votes, difficulty=difficulty, valid=cert.valid,
                        objective=cert.objective.objective, low_info_majority=low_info_majority,
                        tracks_disagree=answers.samples[0].label != votes.majority, all_candidates_easy=all_easy)
    preward = proposer_rewards([case], rcfg.proposer, tr.components("proposer"))
    # the extra questions only train the Solver: the difficulty state and the Proposer see the pick alone
    extra_cases = [_question_case(a, st, rcfg, rejected=False) for a in all_answers[1:]]
    sreward_all = solver_rewards([squestion, *(c[2] for c in extra_cases)], rcfg.solver, tr.components("solver"))
    sreward = sreward_all[0]
    m.update({"h_sc": votes.h_sc, "majority_fraction": votes.majority_fraction, "margin": votes.margin,
              "info": votes.info, "difficulty.bucket": difficulty.bucket, "difficulty.threshold": difficulty.threshold,
              "ste.raw": raws[pick], "ste.d_ste": d_ste, "ste.window": len(st.ste),
              "proposer.reward": preward.values[0], "solver.reward_mean": sum(sreward.rewards) / len(sreward.rewards),
              "solver.reward_raw_mean": sum(sreward.raw) / len(sreward.raw),
              **{k if k.startswith("proposer.") else f"proposer.{k}": v for k, v in preward.diagnostics[0].items()}})
    rollout.update({"question": chosen.question, "target": chosen.target, "options": list(chosen.options),
                    "answers": [s.answer.text for s in answers.samples], "labels": list(answers.labels),
                    "majority": votes.majority, "h_sc": votes.h_sc, "ste": raws[pick], "d_ste": d_ste,
                    "bucket": difficulty.bucket, "solver_rewards": list(sreward.rewards),
                    "skip": sreward.skip_reason if sreward.skip else None, "proposer_reward": preward.values[0]})
    if extra:
        rollout["extra_questions"] = [
            {"question": a.question, "labels": list(a.labels), "majority": c[0].majority,
             "skip": r.skip_reason if r.skip else None} for a, c, r in zip(all_answers[1:], extra_cases, sreward_all[1:])]

    # 5. Updates
    all_votes = [votes, *(c[0] for c in extra_cases)]
    trained = [(a, list(r.rewards), v.majority) for a, r, v in zip(all_answers, sreward_all, all_votes) if not r.skip]
    m["solver.questions_trained"] = len(trained) if recipe.solver.update else 0
    _scene_vote_extra_updates(tr, bb, step, m, rollout)
    scene: list[SceneLabel] = []
    if recipe.solver.update and recipe.solver.scene_vote_questions:
        scene = scene_vote_labels(bb, image, recipe.solver.scene_vote_questions, random.Random(tr.seed_for(step, "scene_vote")),
                                  balanced=recipe.solver.scene_vote_balanced, position=recipe.solver.scene_vote_position,
                                  types=recipe.solver.scene_vote_type_list)
        rollout["scene_vote"] = [lab.to_dict() for lab in scene]
        m["solver.scene_vote_labels"] = len(scene)
        m["solver.scene_vote_changed"] = sum(lab.label != lab.independent for lab in scene)
        if recipe.solver.scene_vote_position:
            m["solver.scene_vote_position_labels"] = sum(lab.kind == "position" for lab in scene)
    if not recipe.solver.update:
        solver_result = UpdateResult.skipped("disabled")
    elif not trained and not scene:
        solver_result = tr.updaters["solver"].skip(f"gate:{sreward.skip_reason}")
    else:
        solver_result = _solver_update(tr, bb, [a for a, _, _ in trained], [x for _, r, _ in trained for x in r],
                                       [majority for _, _, majority in trained], scene=scene, image=image)
    prop_result = _proposer_update(tr, bb, step, image, [main, *extras], [preward.values[0]], extras_solver=solver, m=m)
    solver_result.record_into(m, "solver")
    prop_result.record_into(m, "proposer")
    return m, rollout


def solver_decisions(recipe: Any) -> int:
    """How many update decisions (steps or skips) the Solver takes in one U-step: the main one plus one
    per ``solver.scene_vote_extra_images``; 0 when it does not train."""
    return 1 + recipe.solver.scene_vote_extra_images if recipe.solver.update else 0


def _scene_vote_extra_updates(tr: Any, bb: Any, step: int, m: dict[str, Any], rollout: dict[str, Any]) -> None:
    """``solver.scene_vote_extra_images`` more pool images, each labelled by the scene vote and trained on in
    a Solver update of its own (scene labels alone), one after the other. All labels are drawn first, with
    the weights the step started with; an image whose vote yields no label still takes its decision (a
    skip, which joins the other ranks' gradient all-reduce), so every rank takes the same number."""
    recipe = tr.recipe
    n = solver_decisions(recipe) - 1
    if n <= 0:
        return
    if tr.pool is None:
        raise ValueError("solver.scene_vote_extra_images draws images from the run's pool, and this trainer has none")
    rng = random.Random(tr.seed_for(step, "scene_vote_images"))
    draws = []
    for j in range(n):
        drawn = tr.pool.image_for(rng.randrange(len(tr.pool)) + 1, tr.dist.rank, tr.dist.world_size)
        labels = scene_vote_labels(bb, drawn.image, recipe.solver.scene_vote_questions,
                                   random.Random(tr.seed_for(step, f"scene_vote/{j + 1}")),
                                   balanced=recipe.solver.scene_vote_balanced, position=recipe.solver.scene_vote_position,
                                   types=recipe.solver.scene_vote_type_list)
        draws.append((drawn, labels))
    results = [_solver_update(tr, bb, [], [], [], scene=labels, image=drawn.image) if labels
               else tr.updaters["solver"].skip("scene_vote:no_labels") for drawn, labels in draws]
    ces = [r.diagnostics["scene_vote_ce"] for r in results if "scene_vote_ce" in r.diagnostics]
    m.update({"solver.scene_vote_extra_updates": sum(r.stepped for r in results),
              "solver.scene_vote_extra_labels": sum(len(labels) for _, labels in draws),
              "solver.scene_vote_extra_changed": sum(lab.label != lab.independent for _, labels in draws for lab in labels),
              "solver.scene_vote_extra_ce": sum(ces) / len(ces) if ces else None})
    rollout["scene_vote_extra"] = [{"image": str(drawn.path), "labels": [lab.to_dict() for lab in labels],
                                    "stepped": r.stepped, "skip": r.skip_reason} for (drawn, labels), r in zip(draws, results)]


def _new_samples(answered: list[SolverAnswers]) -> list[SolverSample]:
    """The samples of ``answered`` generated by the solve call (the reused spot-check answers left out)."""
    return [s for a in answered for s in a.samples if s.pps_index != 0]


def _solver_update(tr: Any, bb: Any, answered: list[SolverAnswers], rewards: list[float], majorities: list[str], *,
                   scene: Sequence[SceneLabel] = (), image: Any = None) -> UpdateResult:
    """REINFORCE + KL over the N samples of each trained question, each under its own PPS prompt (§3.9, §5.1),
    plus ``solver.distill_weight`` × the cross-entropy of each majority answer under the canonical prompt,
    plus the cross-entropy of each ``scene`` label about ``image`` under the canonical prompt
    (``solver.scene_vote_questions``). With no trained question the scene labels alone make the loss."""
    upd = tr.updaters["solver"]
    extra: dict[str, float] = {}
    if answered:
        adv = tr.state.solver_baseline.advantages(rewards)  # baseline read before each sample, then updated
        prompts = [p for a in answered for p in a.prompts]
        completions = [c for a in answered for c in a.completions]
        passes = score_policy(bb, "solver", prompts, completions)
        loss, diag = reinforce_loss(passes.logprobs, passes.mask, adv, kl=passes.kl, beta=upd.beta)
        kl_mean: float | None = mean_kl(passes.kl, passes.mask)
        extra.update({"adv_mean": float(adv.mean()), "baseline": tr.state.solver_baseline.value, "pg_loss": diag["pg_loss"]})
    else:
        loss, kl_mean = None, None
    if scene:
        tpl = RoleTemplates.of(bb)
        open_tag, close_tag = tpl.answer_tags
        ce = _solver_ce(bb, [Prompt(tpl.solver_prompt(lab.question, 0, hint=False), image=image) for lab in scene],
                        [f"{open_tag}{lab.label}{close_tag}" for lab in scene])
        loss = ce if loss is None else loss + ce
        extra.update({"scene_vote_ce": float(ce.detach())})
    if loss is None:
        raise ValueError("_solver_update needs trained questions or scene labels")
    weight = tr.recipe.solver.distill_weight
    if weight > 0 and answered:
        pairs = canonical_targets(answered, majorities, RoleTemplates.of(bb))
        if pairs:
            ce = _solver_ce(bb, [p for p, _ in pairs], [list(c.token_ids) for _, c in pairs])
            loss = loss + weight * ce
            extra.update({"distill_ce": float(ce.detach()), "distill_questions": float(len(pairs))})
    return upd.apply(loss, kl_mean=kl_mean, diagnostics=extra)


def _solver_ce(bb: Any, prompts: list[Prompt], completions: list[Any]) -> torch.Tensor:
    """Mean over the sequences of each completion's summed negative log-likelihood under the Solver role,
    with gradients: the cross-entropy the distillation and scene-vote terms teach their targets with."""
    with bb.use_role("solver"):
        out = bb.score(prompts, completions, grad=True)
    return -(out.logprobs * out.mask).sum(1).mean()


def canonical_targets(answered: list[SolverAnswers], majorities: list[str], templates: Any) -> list[tuple[Prompt, Any]]:
    """(canonical prompt, completion) per question: the first sample whose label is the majority (the
    greedy one when it agrees), to be taught under the canonical prompt: framing 0 and no focus hint,
    the prompt evaluation asks with (the greedy sample 0 carries focus hint 0). Its image is sample
    0's. Questions without a greedy sample 0 are left out."""
    out = []
    for a, majority in zip(answered, majorities, strict=True):
        if not a.samples or a.samples[0].pps_index != 0:
            continue
        sample = next((s for s in a.samples if s.label == majority), None)
        if sample is not None:
            prompt = Prompt(templates.solver_prompt(a.question, 0, hint=False), image=a.samples[0].prompt.image)
            out.append((prompt, sample.completion))
    return out


def _member_reward(tr: Any, proposal: Proposal, k: int | None, answers: SolverAnswers | None) -> float:
    """Reward of an extra group member: its candidate ``k`` (first valid) answered with EXTRA_INDICES."""
    rcfg, st = tr.recipe.rewards, tr.state
    if k is None or answers is None:
        case = ProposerCase.unparsed(d_ste=0.0)
    else:
        cert = proposal.certificates[k]
        votes, difficulty, _, low_info_majority = _question_case(answers, st, rcfg, rejected=False)
        raw = _ste_raw(answers.greedy, rcfg.ste) if answers.greedy is not None else 0.0
        case = ProposerCase(d_ste=st.ste.quantile(raw) if raw > rcfg.ste.store_min else 0.0, votes=votes,
                            difficulty=difficulty, valid=cert.valid, objective=cert.objective.objective,
                            low_info_majority=low_info_majority,
                            tracks_disagree=answers.samples[0].label != votes.majority)
    return proposer_rewards([case], rcfg.proposer, tr.components("proposer")).values[0]


def _proposer_update(tr: Any, bb: Any, step: int, image: Any, group: list[Proposal], rewards: list[float], *,
                     extras_solver: Solver, m: dict[str, Any]) -> UpdateResult:
    """Clipped group-relative step over member 0 and the extras (§3.10, §5.2; ratio vs. sampler, KL vs. reference)."""
    recipe = tr.recipe
    if not recipe.proposer.update:
        return UpdateResult.skipped("disabled")
    upd = tr.updaters["proposer"]
    extras = group[1:]
    picks = [next((k for k, cert in enumerate(p.certificates) if cert.valid), None) for p in extras]
    asked = [i for i, k in enumerate(picks) if k is not None]
    questions = [extras[i].candidates[picks[i]].question for i in asked]
    answered = extras_solver.answer(bb, [image] * len(asked), questions, indices=EXTRA_INDICES,
                                    seed=tr.seed_for(step, "extras_solve")) if asked else []
    m["malformed.solver"] = m.get("malformed.solver", 0) + malformed_answers(s for a in answered for s in a.samples)
    by_member = dict(zip(asked, answered))
    rewards = rewards + [_member_reward(tr, p, picks[i], by_member.get(i)) for i, p in enumerate(extras)]
    m["proposer.group_rewards"] = rewards
    if len(group) < 2:
        return upd.skip("group_of_one")
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), recipe.proposer.grpo)
    passes = score_policy(bb, "proposer", [p.prompt for p in group], [p.completion for p in group])
    loss, diag = grpo_loss(passes.logprobs, passes.old_logprobs, adv, mask=passes.mask, kl=passes.kl,
                           beta=upd.beta, config=recipe.proposer.grpo)
    return upd.apply(loss, kl_mean=mean_kl(passes.kl, passes.mask),
                     diagnostics={"clip_fraction": diag.get("clip_fraction", 0.0), "ratio_mean": diag.get("ratio_mean", 1.0),
                                  "adv_std": float(adv.std()) if len(adv) > 1 else 0.0})
