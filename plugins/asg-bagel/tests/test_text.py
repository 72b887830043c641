"""Text decoding and role adapters of the BAGEL backbone: per-sequence stopping, scripted logits, LoRA targets."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from asg.types import Prompt, SamplingParams
from asg_bagel.backbone import BagelBackbone


@pytest.fixture(scope="module")
def bb() -> BagelBackbone:
    return BagelBackbone.load(preset="tiny", seed=0)


@contextmanager
def _head(bb: BagelBackbone, head: nn.Module):
    """Swap the LM head for a test and put the real one back (monkeypatch cannot undo a submodule)."""
    lm = bb.bagel.language_model
    real = lm.lm_head
    lm.lm_head = head
    try:
        yield head
    finally:
        lm.lm_head = real


class _Scripted(nn.Module):
    """An LM head that ignores its input and emits, per call, the logits of a scripted token per row."""

    def __init__(self, script: list[list[int]], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.calls, self.batch_sizes = script, vocab, 0, []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rows = self.script[self.calls]
        self.calls += 1
        self.batch_sizes.append(h.shape[0])
        logits = torch.zeros(h.shape[0], self.vocab)
        for r, tok in enumerate(rows[:h.shape[0]]):
            logits[r, tok] = 10.0
        return logits


def test_each_sequence_stops_on_its_own(bb) -> None:
    """A row that emits <|im_end|> stops at once while the others go on; finished rows leave the batch."""
    a, b = bb.tokenizer.convert_tokens_to_ids("a"), bb.tokenizer.convert_tokens_to_ids("b")
    eos = bb.tokens.eos
    # step 1: row 0 ends, rows 1-2 emit a; step 2 (rows 1-2 left): row 1 ends, row 2 emits b; step 3: row 2 emits a
    greedy = SamplingParams(temperature=0.0, max_new_tokens=3)
    with _head(bb, _Scripted([[eos, a, a], [eos, b], [a]], bb.config.llm.vocab_size)) as head:
        outs = bb.generate_text([Prompt("x"), Prompt("yy"), Prompt("zzz")], greedy, seed=0)
    assert [o.token_ids for o in outs] == [(), (a,), (a, b, a)]
    assert [o.finish_reason for o in outs] == ["stop", "stop", "length"]
    assert [len(o.stats) for o in outs] == [1, 2, 3]  # the <|im_end|> step is recorded for stopped rows
    assert head.batch_sizes == [3, 2, 1]
    assert outs[2].text == "aba"


def test_structure_tokens_are_never_sampled(bb) -> None:
    """Even when <|vision_start|> has the highest logit, a greedy row takes the best allowed token."""
    soi, c = bb.tokens.start_of_image, bb.tokenizer.convert_tokens_to_ids("c")

    class Head(nn.Module):
        def forward(self, h):
            logits = torch.zeros(h.shape[0], bb.config.llm.vocab_size)
            logits[:, soi], logits[:, c] = 10.0, 5.0
            return logits
    with _head(bb, Head()):
        out = bb.generate_text([Prompt("x")], SamplingParams(temperature=0.0, max_new_tokens=2), seed=0)[0]
    assert out.token_ids == (c, c)
    assert int(out.stats.top1[0]) == soi  # the statistics describe the raw logits, not the allowed ones


def test_generator_adapter_reaches_the_generation_expert(bb) -> None:
    """The generator's LoRA covers both experts' projections; the proposer's and solver's only the understanding expert."""
    names = {role: [n for n, _ in bb.adapters.named_parameters(role)] for role in bb.roles}
    assert any("q_proj_moe_gen.lora_A" in n for n in names["generator"])
    assert any("mlp_moe_gen.down_proj.lora_B" in n for n in names["generator"])
    for role in ("proposer", "solver"):
        assert names[role] and not any("moe_gen" in n for n in names[role])
    # 2 layers x (4 attention + 3 MLP projections): 14 adapted modules per expert, A and B each
    assert len(names["solver"]) == 2 * 7 * 2 and len(names["generator"]) == 2 * 2 * 7 * 2


def test_generator_loss_trains_the_generation_expert(bb) -> None:
    """A flow-matching step under the generator role changes its gen-expert adapters and no other role's."""
    from asg.shapes import render, scene_for

    img = render(scene_for("test", 1, 0), 64)
    with bb.use_role("generator"):
        out = bb.generator_loss(["a red circle"], [img], seed=0)
    out.loss.backward()
    grads = {n: p.grad for n, p in bb.adapters.named_parameters("generator")}
    assert any(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if "moe_gen" in n and "lora_B" in n)
    assert all(p.grad is None for role in ("proposer", "solver") for p in bb.trainable_parameters(role))
    assert out.per_sample.shape == (1,) and float(out.loss.detach()) > 0
    for p in bb.trainable_parameters("generator"):
        p.grad = None
