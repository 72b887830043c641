"""The mixture-of-transformers language model against the upstream fixture (cases a and a2), and its
attention rules on hand-checkable inputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config

from asg_bagel.language import KVCache, Qwen2MoTForCausalLM, _attention_mask

BOS, EOS, SOI, EOI = 252, 253, 254, 255


@pytest.fixture(scope="module")
def lm(fixture_dir) -> Qwen2MoTForCausalLM:
    cfg = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]
    llm = next(v for k, v in cfg.items() if k.startswith("llm_config"))
    config = Qwen2Config(**{k: v for k, v in llm.items() if k not in ("qk_norm", "layer_module", "freeze_und", "_attn_implementation")})
    model = Qwen2MoTForCausalLM(config)
    weights = load_file(fixture_dir / "tiny" / "weights.safetensors")
    state = {k.removeprefix("language_model."): v for k, v in weights.items() if k.startswith("language_model.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_case_a_two_packed_prompts_match_upstream(lm, io_tensors) -> None:
    """Two prompts packed in one call give upstream's hidden states, logits and layer-0 cache."""
    ids = io_tensors["a.packed_text_ids"]
    lens = io_tensors["a.query_lens"].tolist()
    assert lens == [9, 6] and ids[0] == BOS and ids[8] == EOS
    cache = lm.new_cache(2)
    with torch.no_grad():
        hidden = lm(lm.model.embed_tokens(ids), lens, io_tensors["a.packed_position_ids"], cache=cache, update_cache=True)
        logits = lm.lm_head(hidden)
    # measured: max abs diff 1.4e-6 (hidden) on torch 2.13 CPU
    torch.testing.assert_close(hidden, io_tensors["a.final_hidden"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, io_tensors["a.logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(cache.keys[0]), io_tensors["a.kv_cache.layer0.key"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(cache.values[0]), io_tensors["a.kv_cache.layer0.value"], atol=1e-5, rtol=1e-5)


def test_case_a2_text_after_a_cached_image_block_matches_upstream(lm, io_tensors) -> None:
    """An image block (one rope position, full attention) cached first, then causal text, gives upstream's logits."""
    vit = io_tensors["a2.vit_tokens_in_llm_space"]  # (6, 64) what the connector writes into the sequence
    marks = lm.model.embed_tokens(torch.tensor([SOI, EOI]))
    block = torch.cat([marks[:1], vit, marks[1:]])
    cache = lm.new_cache(1)
    with torch.no_grad():
        lm(block, [8], io_tensors["a2.image_block_position_ids"], full=torch.ones(8, dtype=torch.bool),
           cache=cache, update_cache=True)
        text = io_tensors["a2.text_ids"]
        hidden = lm(lm.model.embed_tokens(text), [len(text)], io_tensors["a2.text_position_ids"], cache=cache, update_cache=True)
    torch.testing.assert_close(lm.lm_head(hidden), io_tensors["a2.logits"], atol=1e-5, rtol=1e-5)
    assert cache.lengths() == [15]


def test_one_pass_with_blocks_equals_cache_then_text(lm, io_tensors) -> None:
    """Image block and text in one packed pass (two blocks) equal the cached two-step computation."""
    vit = io_tensors["a2.vit_tokens_in_llm_space"]
    marks = lm.model.embed_tokens(torch.tensor([SOI, EOI]))
    text = io_tensors["a2.text_ids"]
    embeds = torch.cat([marks[:1], vit, marks[1:], lm.model.embed_tokens(text)])
    pos = torch.cat([io_tensors["a2.image_block_position_ids"], io_tensors["a2.text_position_ids"]])
    blocks = torch.tensor([0] * 8 + [1] * 7)
    full = torch.tensor([True] * 8 + [False] * 7)
    with torch.no_grad():
        hidden = lm(embeds, [15], pos, blocks=blocks, full=full)
    torch.testing.assert_close(lm.lm_head(hidden[8:]), io_tensors["a2.logits"], atol=1e-5, rtol=1e-5)


def test_attention_mask_rules_by_hand() -> None:
    """Cached keys are always visible; a causal block sees its past, a full block sees itself entirely."""
    # one sample: 2 cached keys, then a full block of 2 tokens, then a causal block of 2 tokens
    blocks = torch.tensor([0, 0, 1, 1])
    full = torch.tensor([True, True, False, False])
    m = _attention_mask([4], [2], blocks, full, torch.device("cpu"))[0, 0].int().tolist()
    assert m == [
        [1, 1, 1, 1, 0, 0],  # full block: both of its tokens, not the later text
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],  # causal: earlier block and itself
        [1, 1, 1, 1, 1, 1],
    ]
    # two samples of different lengths: the short one's padding row sees only key 0
    m2 = _attention_mask([1, 2], [0, 0], torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool), torch.device("cpu"))
    assert m2[0, 0].int().tolist() == [[1, 0], [1, 0]]
    assert m2[1, 0].int().tolist() == [[1, 0], [1, 1]]


def test_packing_does_not_change_a_sample(lm, io_tensors) -> None:
    """A prompt alone gives the same hidden states as when packed beside another."""
    ids, pos = io_tensors["a.packed_text_ids"], io_tensors["a.packed_position_ids"]
    with torch.no_grad():
        both = lm(lm.model.embed_tokens(ids), [9, 6], pos)
        alone = lm(lm.model.embed_tokens(ids[9:]), [6], pos[9:])
    torch.testing.assert_close(both[9:], alone, atol=1e-5, rtol=1e-5)  # float rounding only (measured 1.1e-6)


def test_wrong_lengths_and_cache_size_are_errors(lm) -> None:
    """Lengths that do not sum to the tokens, or a cache for another batch size, raise with the numbers."""
    x = torch.zeros(5, 64)
    with pytest.raises(ValueError, match=r"sum to 4, but 5"):
        lm(x, [2, 2], torch.arange(5))
    with pytest.raises(ValueError, match="cache holds 3 samples"):
        lm(x, [5], torch.arange(5), cache=KVCache(2, 3))
