"""The backbone conformance kit: every primitive's contract as a pytest test class.

A plugin's test suite subclasses :class:`BackboneConformance` and supplies only how to build a small
instance::

    from asg.testing import BackboneConformance

    class TestMyBackbone(BackboneConformance):
        def make_backbone(self):
            return MyBackbone.load(preset="tiny-random")

``make_backbone`` must return a fresh instance with the same weights each time (save/load is tested by
moving state between two instances). Adapters may start at zero (LoRA does); the kit perturbs them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from asg.protocol import Backbone
from asg.types import (
    GENERATION_KINDS,
    ROLES,
    Completion,
    FlowTrace,
    GeneratedImage,
    Prompt,
    SamplingParams,
    ScoreOutput,
    TokenTrace,
)


def _images(backbone: Any, n: int) -> list[Any]:
    from asg.shapes import render, scene_for

    size = backbone.image_size[0] if backbone.image_size[0] >= 32 else 64
    return [render(scene_for("test", 12345, i), size) for i in range(n)]


def perturb_adapters(backbone: Any, scale: float = 0.05, seed: int = 0) -> None:
    """Give every role's adapter parameters non-zero values (LoRA starts with B = 0, i.e. no effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for role in backbone.roles:
            for p in backbone.trainable_parameters(role):
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)


class BackboneConformance:
    """Contract checks for a :class:`asg.protocol.Backbone`. Subclass and implement ``make_backbone``."""

    atol = 2e-4  # generation-time vs teacher-forced statistics, fp32
    max_new_tokens = 6

    def make_backbone(self) -> Backbone:  # pragma: no cover - supplied by the subclass
        raise NotImplementedError("subclasses of BackboneConformance implement make_backbone()")

    @pytest.fixture(scope="class")
    @classmethod
    def backbone(cls) -> Backbone:
        """One backbone shared by the read-only checks of a class (built once: loading costs)."""
        return cls().make_backbone()

    @pytest.fixture
    def fresh(self) -> Backbone:
        """A backbone whose adapters a test may change."""
        return self.make_backbone()

    def prompts(self, backbone: Any) -> list[Prompt]:
        imgs = _images(backbone, 2)
        out = [Prompt("How many circles are there?", image=imgs[0]),
               Prompt("Describe the image in one sentence.", image=imgs[1])]
        out.append(Prompt("Name a shape."))
        return out if backbone.supports_images_in_prompt else [Prompt(p.text) for p in out]

    # -- declared capabilities ---------------------------------------------------------------------
    def test_declares_capabilities(self, backbone: Any) -> None:
        """The backbone declares its name, generation kind, roles, image size and embedding width."""
        assert isinstance(backbone, Backbone)
        assert isinstance(backbone.name, str) and backbone.name
        assert backbone.generation_kind in GENERATION_KINDS
        assert backbone.roles and set(backbone.roles) <= set(ROLES)
        h, w = backbone.image_size
        assert isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        assert isinstance(backbone.embedding_dim, int) and backbone.embedding_dim > 0
        assert isinstance(backbone.supports_images_in_prompt, bool)

    def test_trainable_parameters_are_disjoint_and_nonempty(self, backbone: Any) -> None:
        """Each role has its own non-empty set of trainable parameters; no tensor is shared."""
        seen: dict[int, str] = {}
        for role in backbone.roles:
            params = backbone.trainable_parameters(role)
            assert params, f"role {role!r} has no trainable parameters"
            for p in params:
                assert p.requires_grad
                assert id(p) not in seen, f"a parameter belongs to both {seen[id(p)]!r} and {role!r}"
                seen[id(p)] = role

    def test_unknown_role_is_rejected(self, backbone: Any) -> None:
        """use_role with a role the backbone lacks raises an error naming the valid roles."""
        with pytest.raises(Exception, match="role"):
            with backbone.use_role("no-such-role"):
                pass

    # -- text --------------------------------------------------------------------------------------
    def _mixed(self) -> list[SamplingParams]:
        n = self.max_new_tokens
        return [SamplingParams(temperature=0.0, max_new_tokens=n), SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=n),
                SamplingParams(temperature=1.5, top_k=5, max_new_tokens=n - 2)]

    def test_generate_text_returns_completions_with_stats(self, backbone: Any) -> None:
        """One batched call decodes every prompt under its own sampling settings, with per-step stats."""
        prompts = self.prompts(backbone)
        params = self._mixed()
        with backbone.use_role(backbone.roles[0]):
            outs = backbone.generate_text(prompts, params, seed=0)
        assert len(outs) == len(prompts)
        for c, p in zip(outs, params):
            assert isinstance(c, Completion) and c.sampling == p
            assert len(c.token_ids) <= p.max_new_tokens
            assert c.finish_reason in ("stop", "length")
            assert c.stats is not None
            steps = len(c.token_ids) + (1 if c.finish_reason == "stop" else 0)
            assert len(c.stats) == steps
            if steps:
                assert bool((c.stats.entropy >= -1e-5).all())
                assert bool((c.stats.logprob <= 1e-6).all())
                assert bool((c.stats.margin >= 0).all())

    def test_generate_text_is_deterministic_under_a_seed(self, backbone: Any) -> None:
        """The same seed gives the same sampled tokens; greedy rows do not depend on the seed."""
        prompts = self.prompts(backbone)
        params = self._mixed()
        with backbone.use_role(backbone.roles[0]):
            a = backbone.generate_text(prompts, params, seed=7)
            b = backbone.generate_text(prompts, params, seed=7)
            c = backbone.generate_text(prompts, params, seed=8)
        assert [x.token_ids for x in a] == [x.token_ids for x in b]
        assert a[0].token_ids == c[0].token_ids  # greedy

    def test_greedy_output_does_not_depend_on_the_batch(self, backbone: Any) -> None:
        """A prompt decoded alone and inside a padded batch gives the same greedy tokens and stats."""
        prompts = self.prompts(backbone)
        greedy = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens)
        with backbone.use_role(backbone.roles[0]):
            batch = backbone.generate_text(prompts, greedy)
            alone = backbone.generate_text([prompts[1]], greedy)[0]
        assert batch[1].token_ids == alone.token_ids
        torch.testing.assert_close(batch[1].stats.entropy, alone.stats.entropy, atol=self.atol, rtol=1e-3)

    def test_generation_stats_match_teacher_forced_scores(self, backbone: Any) -> None:
        """Log-probs and entropies recorded while sampling equal those of teacher-forcing the same ids."""
        prompts = self.prompts(backbone)
        params = [SamplingParams(temperature=1.0, max_new_tokens=self.max_new_tokens)] * len(prompts)
        with backbone.use_role(backbone.roles[0]):
            outs = backbone.generate_text(prompts, params, seed=3)
            for c, p in zip(outs, prompts):
                if not c.token_ids and c.finish_reason == "length":
                    continue
                s = backbone.score([p], [list(c.token_ids)], append_eos=c.finish_reason == "stop")
                n = len(c.stats)
                torch.testing.assert_close(s.logprobs[0, :n], c.stats.logprob, atol=self.atol, rtol=1e-3)
                torch.testing.assert_close(s.entropy[0, :n], c.stats.entropy, atol=self.atol, rtol=1e-3)

    def test_score_shapes_and_logits(self, backbone: Any) -> None:
        """score returns right-padded (B, T) stats whose values match a plain log-softmax of its logits."""
        prompts = self.prompts(backbone)[:2]
        comps = ["three", "a red circle on the left"]
        with backbone.use_role(backbone.roles[0]):
            s = backbone.score(prompts, comps, return_logits=True)
        assert isinstance(s, ScoreOutput) and s.logits is not None
        B, T = s.mask.shape
        assert B == 2 and s.logits.shape[:2] == (B, T)
        lengths = s.mask.sum(-1)
        assert int(lengths[1]) > int(lengths[0]) >= 2  # longer text, more tokens (EOS included)
        for b in range(B):  # right-padded: real tokens first
            n = int(lengths[b])
            assert bool(s.mask[b, :n].all()) and not bool(s.mask[b, n:].any())
        logp = torch.log_softmax(s.logits.float(), -1)
        ent = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(s.entropy[s.mask], ent[s.mask], atol=1e-4, rtol=1e-4)
        assert bool((s.logprobs[s.mask] <= 0).all()) and bool((s.logprobs[~s.mask] == 0).all())

    def test_score_rejects_mismatched_batches(self, backbone: Any) -> None:
        """score with different numbers of prompts and completions is an error."""
        with pytest.raises(ValueError):
            backbone.score(self.prompts(backbone)[:2], ["a"])

    # -- roles and the reference policy -------------------------------------------------------------
    def test_reference_pass_equals_adapters_off(self, fresh: Any) -> None:
        """With every adapter changed, use_role(None) still scores exactly like the untouched base
        model, while each role's score moves."""
        prompts = self.prompts(fresh)[:2]
        comps = ["two", "a blue square"]
        with fresh.use_role(None):
            before = fresh.score(prompts, comps).logprobs
        perturb_adapters(fresh)
        with fresh.use_role(None):
            after = fresh.score(prompts, comps).logprobs
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
        for role in fresh.roles:
            with fresh.use_role(role):
                moved = fresh.score(prompts, comps).logprobs
            if role != "generator" or self._generator_uses_text(fresh):
                assert not torch.allclose(moved, before, atol=1e-5), f"role {role!r} adapters do not affect scores"

    def _generator_uses_text(self, backbone: Any) -> bool:
        return True

    def test_role_isolation_text(self, fresh: Any) -> None:
        """A backward pass of a policy loss under a role reaches that role's parameters and no others."""
        perturb_adapters(fresh)
        prompts = self.prompts(fresh)[:2]
        for role in fresh.roles:
            self._zero_grads(fresh)
            with fresh.use_role(role):
                s = fresh.score(prompts, ["two", "a blue square"], grad=True)
                (-s.sequence_logprob().sum()).backward()
            self._assert_grads_only(fresh, role)

    def test_role_context_restores_the_previous_role(self, fresh: Any) -> None:
        """Nested use_role blocks restore the outer role on exit, even after an exception."""
        perturb_adapters(fresh)
        p, c = self.prompts(fresh)[:1], ["two"]
        roles = fresh.roles
        with fresh.use_role(roles[0]):
            outer = fresh.score(p, c).logprobs
            with pytest.raises(RuntimeError), fresh.use_role(roles[-1]):
                raise RuntimeError("inside")
            torch.testing.assert_close(fresh.score(p, c).logprobs, outer)

    # -- images ------------------------------------------------------------------------------------
    def test_generate_images_with_training_signal(self, backbone: Any) -> None:
        """Images have the declared size and carry the trace their update needs; a seed fixes them."""
        prompts = ["a red circle", "two squares"]
        with backbone.use_role("generator" if "generator" in backbone.roles else None):
            a = backbone.generate_images(prompts, seed=11)
            b = backbone.generate_images(prompts, seed=11)
            c = backbone.generate_images(prompts[:1], seed=12)
        assert len(a) == 2
        for g in a:
            assert isinstance(g, GeneratedImage)
            assert (g.image.height, g.image.width) == tuple(backbone.image_size)
            if backbone.generation_kind == "autoregressive":
                assert isinstance(g.trace, TokenTrace) and len(g.trace.token_ids) > 0
            else:
                assert isinstance(g.trace, FlowTrace)
        pixels = [np.asarray(x.image) for x in a]
        assert all(np.array_equal(p, np.asarray(q.image)) for p, q in zip(pixels, b))
        assert not np.array_equal(pixels[0], np.asarray(c[0].image))

    def test_generator_update_signal_reaches_only_the_generator(self, fresh: Any) -> None:
        """The generator's loss (flow) or image-token log-probs (AR) are finite and train only the generator."""
        if "generator" not in fresh.roles:
            pytest.skip("backbone has no generator role")
        perturb_adapters(fresh)
        prompts = ["a red circle", "two squares"]
        with fresh.use_role("generator"):
            gen = fresh.generate_images(prompts, seed=5)
            self._zero_grads(fresh)
            if fresh.generation_kind == "autoregressive":
                lp = fresh.image_token_logprobs(prompts, [g.trace for g in gen])
                assert lp.shape == (2,) and bool(torch.isfinite(lp).all()) and bool((lp <= 0).all())
                (-lp.sum()).backward()
            else:
                targets = [gen[0], _images(fresh, 1)[0]]
                out = fresh.generator_loss(prompts, targets, torch.tensor([1.0, 0.5]), seed=0)
                assert out.loss.ndim == 0 and bool(torch.isfinite(out.loss))
                assert out.per_sample.shape == (2,)
                expected = (torch.tensor([1.0, 0.5]) * out.per_sample.detach().float().cpu()).mean()
                torch.testing.assert_close(out.loss.detach().float().cpu(), expected, atol=1e-5, rtol=1e-5)
                again = fresh.generator_loss(prompts, targets, torch.tensor([1.0, 0.5]), seed=0)
                torch.testing.assert_close(again.loss.detach(), out.loss.detach())
                out.loss.backward()
        self._assert_grads_only(fresh, "generator")

    # -- embeddings --------------------------------------------------------------------------------
    def test_embeddings_are_unit_vectors_that_depend_on_input(self, backbone: Any) -> None:
        """embed_text/embed_image return (B, D) unit vectors; different inputs give different vectors."""
        t = backbone.embed_text(["a red circle", "three blue squares"])
        assert t.shape == (2, backbone.embedding_dim)
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(2), atol=1e-4, rtol=0)
        assert float((t[0] - t[1]).abs().max()) > 1e-4
        torch.testing.assert_close(backbone.embed_text(["a red circle"])[0], t[0], atol=1e-5, rtol=0)
        imgs = _images(backbone, 2)
        v = backbone.embed_image(imgs)
        assert v.shape == (2, backbone.embedding_dim)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(2), atol=1e-4, rtol=0)
        assert float((v[0] - v[1]).abs().max()) > 1e-4, "image embeddings do not depend on the image"

    # -- state -------------------------------------------------------------------------------------
    def test_save_load_round_trip(self, fresh: Any, tmp_path: Any) -> None:
        """Trainable state saved from one instance and loaded into a new one reproduces its outputs."""
        perturb_adapters(fresh, seed=3)
        path = fresh.save_trainable(tmp_path / "trainable.safetensors")
        other = self.make_backbone()
        prompts, comps = self.prompts(fresh)[:2], ["two", "a blue square"]
        role = fresh.roles[0]
        with fresh.use_role(role):
            want = fresh.score(prompts, comps).logprobs
        with other.use_role(role):
            assert not torch.allclose(other.score(prompts, comps).logprobs, want, atol=1e-5)
        other.load_trainable(path)
        with other.use_role(role):
            torch.testing.assert_close(other.score(prompts, comps).logprobs, want, atol=1e-6, rtol=0)
        a, b = fresh.trainable_state_dict(), other.trainable_state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def test_loading_a_mismatched_state_is_an_error(self, fresh: Any) -> None:
        """load_trainable_state_dict rejects missing or unknown keys instead of loading half a state."""
        state = fresh.trainable_state_dict()
        state.pop(next(iter(state)))
        with pytest.raises(Exception, match="missing"):
            fresh.load_trainable_state_dict(state)
        state = fresh.trainable_state_dict()
        state["not.a.parameter"] = torch.zeros(1)
        with pytest.raises(Exception, match="unexpected"):
            fresh.load_trainable_state_dict(state)

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _zero_grads(backbone: Any) -> None:
        for p in backbone.root_module().parameters():
            p.grad = None

    @staticmethod
    def _assert_grads_only(backbone: Any, role: str) -> None:
        own = {id(p) for p in backbone.trainable_parameters(role)}
        reached = [n for n, p in backbone.root_module().named_parameters()
                   if p.grad is not None and float(p.grad.abs().sum()) > 0]
        assert reached, f"no gradient reached any parameter under role {role!r}"
        params = dict(backbone.root_module().named_parameters())
        strays = [n for n in reached if id(params[n]) not in own]
        assert not strays, f"gradient under role {role!r} leaked into {strays[:5]}"
        assert math.isfinite(sum(float(params[n].grad.abs().sum()) for n in reached))
