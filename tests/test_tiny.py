"""The embedded `tiny` backbone: conformance, its tokenizer and chat format, config, shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asg.backbones.tiny import templates as T
from asg.backbones.tiny.config import TinyConfig
from asg.backbones.tiny.model import WEIGHTS_DIR, TinyBackbone, image_to_tensor, tensor_to_image
from asg.backbones.tiny.tokenizer import CHAT_TEMPLATE, chat, load_tokenizer
from asg.errors import ConfigError, DataError
from asg.testing import BackboneConformance


class TestTinyConformance(BackboneConformance):
    """The shipped `tiny` backbone passes every contract check of the kit."""

    def make_backbone(self):
        return TinyBackbone.load()


def test_shipped_weights_are_small_safetensors() -> None:
    """The weights that ship in asg-core are safetensors files of at most ~25 MB."""
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert (WEIGHTS_DIR / "model.safetensors").is_file() and size <= 25 * 2**20
    assert not list(WEIGHTS_DIR.glob("*.bin")) and not list(WEIGHTS_DIR.glob("*.pt"))


def test_chat_function_matches_the_tokenizer_chat_template() -> None:
    """chat() produces exactly what the tokenizer's ChatML template renders."""
    tok = load_tokenizer(WEIGHTS_DIR)
    assert tok.chat_template == CHAT_TEMPLATE
    rendered = tok.apply_chat_template([{"role": "user", "content": "<image>\nHow many?"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == chat("How many?", image=True)


def test_role_tags_are_single_tokens() -> None:
    """Answer and proposer tags are atomic tokens, so the first answer token follows <answer> directly."""
    tok = load_tokenizer(WEIGHTS_DIR)
    for tag in T.TAGS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    ids = tok.encode("<answer>3</answer>", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[:1]) == ["<answer>"]


def test_config_rejects_inconsistent_and_unknown_values() -> None:
    """TinyConfig names the field and the constraint it breaks; unknown keys are listed."""
    with pytest.raises(ConfigError, match=r"image_size \(60\) must be a multiple of patch_size \(8\)"):
        TinyConfig(image_size=60)
    with pytest.raises(ConfigError, match=r"text_hidden \(190\) must be divisible by text_heads \(4\)"):
        TinyConfig(text_hidden=190)
    with pytest.raises(ConfigError, match="unknown TinyConfig key.*colour"):
        TinyConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match=r"TinyConfig.lora_r must be an integer in \[1, inf\], got 0"):
        TinyConfig(lora_r=0)


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    """Unknown presets, missing directories and dtypes are reported precisely."""
    with pytest.raises(ConfigError, match="unknown tiny preset 'huge'; valid presets: base, init"):
        TinyBackbone.load(preset="huge")
    with pytest.raises(DataError, match="does not exist"):
        TinyBackbone.load(model=tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"lacks tokenizer.json, model.safetensors: point --model at"):
        TinyBackbone.load(model=tmp_path)
    with pytest.raises(ConfigError, match="dtype must be one of float32, bfloat16, float16"):
        TinyBackbone.load(dtype="int4")


def test_meta_device_build_allocates_nothing() -> None:
    """load(device='meta', weights=False) builds the full architecture without storage."""
    bb = TinyBackbone.load(device="meta", weights=False)
    assert all(p.is_meta for p in bb.net.parameters())
    assert sum(p.numel() for p in bb.net.parameters()) > 1_000_000


def test_image_tensor_round_trip() -> None:
    """Pixels map to [-1, 1] and back exactly (uint8 -> float -> uint8)."""
    import numpy as np

    from asg.shapes import render, scene_for

    img = render(scene_for("test", 0, 0), 64)
    x = image_to_tensor(img, 64)
    assert x.shape == (3, 64, 64) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert np.array_equal(np.asarray(tensor_to_image(x)), np.asarray(img))


def test_generated_image_latents_decode_to_the_image() -> None:
    """A FlowTrace holds the latents that decode to exactly the returned image, from its noise."""
    import numpy as np

    bb = TinyBackbone.load()
    with bb.use_role("generator"):
        (g,) = bb.generate_images(["a red circle"], seed=0, num_steps=4)
    assert g.trace.latents.shape == (bb.config.latent_channels, bb.config.latent_size, bb.config.latent_size)
    assert np.array_equal(np.asarray(bb.decode_latents(g.trace.latents[None])[0]), np.asarray(g.image))
    expected_noise = torch.randn(g.trace.noise.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.trace.noise, expected_noise)


def test_autoencoder_reconstructs_held_out_scenes() -> None:
    """The shipped autoencoder's round trip keeps held-out test scenes readable by the detector."""
    from asg.evaluation import scene_match_rate
    from asg.shapes import render, scene_for

    bb = TinyBackbone.load()
    imgs = [render(scene_for("test", 4, i), 64) for i in range(60)]
    assert scene_match_rate(imgs, bb.decode_latents(bb.encode_images(imgs))) >= 0.95


def test_shipped_model_is_competent_but_imperfect() -> None:
    """On 150 held-out test questions the shipped base answers well above chance and below perfect."""
    from asg.evaluation import evaluate_vqa

    res = evaluate_vqa(TinyBackbone.load(), split="test", seed=1, n=150)
    assert 35.0 <= res["accuracy"] <= 85.0, res["per_qtype"]


def test_pretrain_report_ships_with_the_weights() -> None:
    """The shipped weights come with the report of the run that produced them."""
    report = json.loads((WEIGHTS_DIR / "pretrain_report.json").read_text())
    assert report["labeled_set"]["split"] == "pretrain" and report["labeled_set"]["scenes"] >= 1
    cfg = json.loads((WEIGHTS_DIR / "config.json").read_text())
    assert cfg == report["model_config"]
    assert report["parameters"] == sum(p.numel() for p in TinyBackbone.load(adapters=False).net.parameters())


def test_one_phrase_position_rewrites_what_the_model_reads() -> None:
    """With TinyConfig.one_phrase_position the model reads "Is the A to the right of the B?" as "Is the B to
    the left of the A?": the same input ids and the same answer scores as the rewritten prompt; without it the
    two prompts are different inputs. Old config.json files (no key) load with the rewrite off."""
    import attrs

    from asg.types import Prompt
    from asg.shapes import render, scene_for

    image = render(scene_for("val", 0, 0), 64)
    asked = Prompt(T.solver_prompt("Is the red circle to the right of the blue square?"), image=image)
    canonical = Prompt(T.solver_prompt("Is the blue square to the left of the red circle?"), image=image)
    plain = TinyBackbone.load(adapters=False)
    assert plain.config.one_phrase_position is False
    assert not torch.equal(plain._encode([asked])["input_ids"], plain._encode([canonical])["input_ids"])
    rewriting = TinyBackbone.load(adapters=False)
    rewriting.config = attrs.evolve(rewriting.config, one_phrase_position=True)
    assert torch.equal(rewriting._encode([asked])["input_ids"], plain._encode([canonical])["input_ids"])
    answers = [T.ANSWER.format(answer=a) for a in ("yes", "no")]
    got = rewriting.score([asked, asked], answers).logprobs.sum(-1)
    want = plain.score([canonical, canonical], answers).logprobs.sum(-1)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain.score([asked, asked], answers).logprobs.sum(-1), want, atol=1e-5)
    saved = rewriting.config.to_dict()
    assert saved["one_phrase_position"] is True and TinyConfig.from_dict(saved).one_phrase_position is True
    del saved["one_phrase_position"]
    assert TinyConfig.from_dict(saved).one_phrase_position is False
    with pytest.raises(TypeError, match="one_phrase_position"):
        TinyConfig(one_phrase_position="yes")


def test_evaluation_says_when_position_questions_are_read_in_one_phrase(tmp_path: Path) -> None:
    """`asg eval`'s results and report name the rewrite of a model with one_phrase_position; a plain model's
    report has no such line."""
    import attrs

    from asg.evaluation import evaluate_vqa, write_report

    empty_gen = {"images_per_prompt": 1, "n_prompts": 0, "overall": 0.0, "per_tag": {}, "samples": []}
    bb = TinyBackbone.load(adapters=False)
    for flag, read_as in ((False, "asked"), (True, "one phrase per axis")):
        bb.config = attrs.evolve(bb.config, one_phrase_position=flag)
        vqa = evaluate_vqa(bb, split="val", n=6, role=None)
        assert vqa["position_read_as"] == read_as
        text = write_report({"vqa": vqa, "geneval_mini": dict(empty_gen)}, tmp_path / read_as, title="t").read_text()
        assert ("one phrase per axis" in text) is flag
        assert json.loads((tmp_path / read_as / "results.json").read_text())["vqa"]["position_read_as"] == read_as
