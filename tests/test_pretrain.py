"""`asg tiny pretrain` is reproducible by seed and writes a loadable model with its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asg.backbones.tiny.model import TinyBackbone
from asg.backbones.tiny.pretrain import pretrain
from asg.backbones.tiny.pretrain_config import PretrainConfig
from asg.backbones.tiny.pretrain_data import LabeledSet, drawing_prompts, understanding_example
from asg.shapes import Obj, Scene

SMALL = dict(scenes=6, vae_steps=2, vae_batch=2, steps=2, batch_text=3, batch_image=2, warmup=1, eval_every=0, eval_questions=2, eval_per_tag=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out[name] = tmp_path_factory.mktemp(name)
        pretrain(PretrainConfig(seed=seed, **SMALL), out[name])
    return out


def test_same_seed_gives_identical_weights(runs) -> None:
    """Two runs with the same seed write bit-identical weights and tokenizers; another seed differs."""
    a, b, c = (load_file(str(runs[k] / "model.safetensors")) for k in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (runs["a"] / "tokenizer.json").read_bytes() == (runs["b"] / "tokenizer.json").read_bytes()


def test_output_loads_as_a_backbone_with_a_report(runs) -> None:
    """The output directory loads with --model and holds a report with the loss history and evals."""
    bb = TinyBackbone.load(model=runs["a"])
    assert bb.config.vocab_size == len(bb.tokenizer)
    report = json.loads((runs["a"] / "pretrain_report.json").read_text())
    assert [h["step"] for h in report["history"]] == [1, 2]
    assert report["labeled_set"]["scenes"] == 6 and report["evals"][-1]["step"] == 2
    assert (runs["a"] / "pretrain_curves.png").stat().st_size > 1000


def test_refuses_to_overwrite_foreign_weights(tmp_path: Path) -> None:
    """A directory with weights that pretrain did not write is left alone."""
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="did not write"):
        pretrain(PretrainConfig(**SMALL), tmp_path)


def test_drawing_prompts_are_true_of_the_scene() -> None:
    """Drawing prompts of a two-object scene include its GenEval-style phrasings, position by hand."""
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.5), Obj("square", "blue", "large", 0.8, 0.5)))
    prompts = drawing_prompts(scene)
    assert "a circle and a square" in prompts and "a red circle and a blue square" in prompts
    assert "a circle to the left of a square" in prompts  # x 0.2 vs 0.8, same y
    assert not any("above" in p or "below" in p for p in prompts)
    assert prompts[0].startswith("a small red circle")


def test_understanding_examples_cover_every_task() -> None:
    """Each pretraining task yields a prompt with the image and a target in the role's output format."""
    import numpy as np

    data = LabeledSet(4, 0, 64)
    rng = np.random.default_rng(0)
    for task, marker in (("vqa", "<answer>"), ("caption", "."), ("proposer", "<q><target>"), ("spec", "<prompt>")):
        prompt, target, got = understanding_example(data, rng, task)
        assert got == task and prompt.image is not None and marker in target


def test_position_share_draws_position_questions_where_a_scene_has_them() -> None:
    """--position-share 1 makes every VQA example of a scene with a position question a position question;
    at the default 0 the question types are drawn evenly, so fewer are position questions."""
    import numpy as np

    data = LabeledSet(30, 0, 64)
    has_position = {i for i, qas in enumerate(data.qas) if any(q.qtype == "position" for q in qas)}
    assert 0 < len(has_position) < len(data)
    phrases = (" to the left of the ", " to the right of the ", " above the ", " below the ")
    counts = {0.0: 0, 1.0: 0}
    for share in counts:
        for seed in range(150):
            scene = int(np.random.default_rng(seed).integers(len(data)))  # the first draw picks the scene
            prompt, target, _ = understanding_example(data, np.random.default_rng(seed), "vqa", position_share=share)
            asks_position = any(p in prompt.text for p in phrases)
            assert target in ("<answer>yes</answer>", "<answer>no</answer>") or not asks_position
            if share == 1.0:
                assert asks_position == (scene in has_position), seed
            counts[share] += asks_position
    assert counts[0.0] < counts[1.0] / 2
    with pytest.raises(ValueError, match="position_share"):
        PretrainConfig(position_share=1.5)


def test_task_mix_by_hand() -> None:
    """The VQA share takes its part; the rest keeps the 15:15:10 ratio of caption, proposer, spec."""
    from asg.backbones.tiny.pretrain_data import task_mix

    assert task_mix(0.6) == [0.6, 0.15, 0.15, 0.10]
    assert task_mix(0.8) == pytest.approx([0.8, 0.075, 0.075, 0.05])
    assert task_mix(1.0) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="vqa_share"):
        task_mix(1.5)


def test_continue_with_a_fresh_vision_tower(runs, tmp_path: Path) -> None:
    """--init-from keeps tokenizer, autoencoder and (at a negligible lr) the language model, while
    --reinit vision replaces the vision tower and projector."""
    out = tmp_path / "cont"
    report = pretrain(PretrainConfig(init_from=str(runs["a"]), reinit="vision", lr=1e-12, vqa_share=1.0, **SMALL), out)
    assert report["autoencoder"]["continued_from"] == str(runs["a"]) and report["autoencoder_history"] == []
    assert (out / "tokenizer.json").read_bytes() == (runs["a"] / "tokenizer.json").read_bytes()
    before, after = load_file(str(runs["a"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()

    def moved(prefix: str) -> float:
        return max(float((before[k] - after[k]).abs().max()) for k in before if k.startswith(prefix))

    assert moved("vae.") == 0.0
    assert moved("vlm.model.language_model.") < 1e-6 and moved("gen.") < 1e-6
    assert moved("vlm.model.vision_tower.") > 0.01 and moved("vlm.model.multi_modal_projector.") > 0.01


def test_continue_with_everything_fresh_but_the_autoencoder(runs, tmp_path: Path) -> None:
    """--reinit all keeps the tokenizer and the autoencoder and replaces every other weight (at a
    negligible lr, so what moved was re-initialised, not trained)."""
    out = tmp_path / "fresh"
    pretrain(PretrainConfig(init_from=str(runs["a"]), reinit="all", lr=1e-12, vqa_share=1.0, **SMALL), out)
    assert (out / "tokenizer.json").read_bytes() == (runs["a"] / "tokenizer.json").read_bytes()
    before, after = load_file(str(runs["a"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for k in before:
        diff = float((before[k] - after[k]).abs().max())
        if k.startswith("vae."):
            assert diff == 0.0, k
        elif before[k].numel() > 1 and before[k].float().std() > 0:  # norms initialised to ones stay equal
            assert diff > 0.0, k
    assert any(k.startswith("gen.") for k in before) and any(k.startswith("vlm.model.language_model.") for k in before)


def test_continue_with_the_eyes_kept_and_the_language_side_fresh(runs, tmp_path: Path) -> None:
    """--reinit language keeps the autoencoder, vision tower and projector and replaces the language
    model and the generation head (at a negligible lr, so what moved was re-initialised)."""
    out = tmp_path / "lang"
    pretrain(PretrainConfig(init_from=str(runs["a"]), reinit="language", lr=1e-12, vqa_share=1.0, **SMALL), out)
    before, after = load_file(str(runs["a"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    eyes = ("vae.", "vlm.model.vision_tower.", "vlm.model.multi_modal_projector.")
    for k in before:
        diff = float((before[k] - after[k]).abs().max())
        if k.startswith(eyes):
            assert diff < 1e-6, k
        elif before[k].numel() > 1 and before[k].float().std() > 0:
            assert diff > 0.0, k
    assert any(k.startswith("vlm.model.vision_tower.") for k in before)


def test_continuation_errors_name_the_problem(runs, tmp_path: Path) -> None:
    from asg.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="needs init_from"):
        PretrainConfig(reinit="vision")
    with pytest.raises(DataError, match="nowhere does not exist"):
        pretrain(PretrainConfig(init_from=str(tmp_path / "nowhere"), **SMALL), tmp_path / "out")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(DataError, match="lacks tokenizer.json, model.safetensors"):
        pretrain(PretrainConfig(init_from=str(tmp_path / "half"), **SMALL), tmp_path / "out")
    with pytest.raises(FileExistsError, match="is the --init-from directory"):
        pretrain(PretrainConfig(init_from=str(runs["a"]), **SMALL), runs["a"])


def test_language_model_size_of_a_fresh_pretraining(tmp_path: Path) -> None:
    """--text-hidden/--text-layers size the language model: the saved config says so, the weights have
    those shapes, the directory loads; a continued model refuses them (it keeps its architecture)."""
    from asg.errors import ConfigError

    pretrain(PretrainConfig(text_hidden=96, text_layers=2, **SMALL), tmp_path / "wide")
    bb = TinyBackbone.load(model=tmp_path / "wide")
    assert (bb.config.text_hidden, bb.config.text_layers) == (96, 2)
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["text_hidden"] == 96
    weights = load_file(str(tmp_path / "wide" / "model.safetensors"))
    layers = {k.split("layers.")[1].split(".")[0] for k in weights if "language_model" in k and "layers." in k}
    assert layers == {"0", "1"}
    embed = next(v for k, v in weights.items() if "language_model" in k and k.endswith("embed_tokens.weight"))
    assert embed.shape[1] == 96
    assert PretrainConfig().model_sizes() == {}
    # The MLP follows the width at the default's ratio 512/192 = 8/3 (rounded up to a multiple of 8),
    # unless given: a wider model is not a narrower MLP.
    assert bb.config.text_intermediate == 256
    assert weights["vlm.model.language_model.layers.0.mlp.gate_proj.weight"].shape == (256, 96)
    assert PretrainConfig(text_hidden=384).model_sizes() == {"text_hidden": 384, "text_intermediate": 1024}
    assert PretrainConfig(text_hidden=100).model_sizes()["text_intermediate"] == 272  # 8/3 * 100 = 266.7
    assert PretrainConfig(text_hidden=384, text_intermediate=768).model_sizes()["text_intermediate"] == 768
    assert PretrainConfig(text_layers=6).model_sizes() == {"text_layers": 6}
    for sizes in ({"text_layers": 6}, {"text_intermediate": 1024}):
        with pytest.raises(ConfigError, match="keeps its own architecture"):
            PretrainConfig(init_from=str(tmp_path / "wide"), **sizes)


def test_eval_line_lists_vqa_by_question_type(runs) -> None:
    """The progress line of an evaluation names every question type of the report's eval, with its score."""
    from asg.backbones.tiny.pretrain import _eval_line

    ev = json.loads((runs["a"] / "pretrain_report.json").read_text())["evals"][-1]
    line = _eval_line(ev)
    assert line.startswith(f"step 2: val VQA {ev['val_vqa_accuracy']:.1f}%")
    qtypes = [k[len("val_vqa_"):] for k in ev if k.startswith("val_vqa_") and k != "val_vqa_accuracy"]
    assert qtypes and all(f"{q} {ev['val_vqa_' + q]:.1f}" in line for q in qtypes)
    hand = {"step": 7, "val_vqa_accuracy": 60.0, "val_geneval_mini": 20.0, "val_vqa_existence": 75.0, "val_vqa_color": 50.0}
    assert _eval_line(hand) == "step 7: val VQA 60.0%  val GenEval-mini 20.0  [VQA by type: color 50.0  existence 75.0]"


def test_one_phrase_is_saved_with_the_model_and_kept_when_continued(runs, tmp_path: Path) -> None:
    """`--one-phrase` writes TinyConfig.one_phrase_position into config.json (so the loaded model keeps reading
    position questions in one phrase per axis) and into the report; a model continued from it without the
    flag keeps the setting, and the flag is on the command line."""
    import argparse

    from asg.backbones.tiny.pretrain_config import add_arguments, config_from_args

    out = tmp_path / "one"
    report = pretrain(PretrainConfig(init_from=str(runs["a"]), one_phrase=True, lr=1e-12, **SMALL), out)
    assert json.loads((out / "config.json").read_text())["one_phrase_position"] is True
    assert report["pretrain_config"]["one_phrase"] is True and report["model_config"]["one_phrase_position"] is True
    assert TinyBackbone.load(model=out).config.one_phrase_position is True
    assert TinyBackbone.load(model=runs["a"]).config.one_phrase_position is False
    pretrain(PretrainConfig(init_from=str(out), lr=1e-12, **SMALL), tmp_path / "kept")
    assert TinyBackbone.load(model=tmp_path / "kept").config.one_phrase_position is True
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--one-phrase"])).one_phrase is True
    assert config_from_args(parser.parse_args([])).one_phrase is False
