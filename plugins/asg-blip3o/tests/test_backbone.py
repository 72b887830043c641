"""BLIP3o as an asg backbone: the full-size manifest, checkpoint folders, roles, the generator's targets,
registration, the loop, and the GPU smoke flow on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from asg.errors import ConfigError, DataError
from asg.types import Prompt, SamplingParams
from asg_blip3o.backbone import Blip3oBackbone


@pytest.fixture(scope="module")
def bb() -> Blip3oBackbone:
    return Blip3oBackbone.load(preset="tiny", seed=0)


def test_full_manifest_matches_the_release_checkpoint(fixture_dir, capsys) -> None:
    """`asg inspect blip3o --preset full --manifest` lists exactly the 1372 keys and shapes of the release shards,
    and the 772 of the optional EVA-CLIP generation tower separately."""
    from asg.cli import main

    assert main(["inspect", "blip3o", "--preset", "full", "--manifest"]) == 0
    report = json.loads(capsys.readouterr().out)
    files = report["manifest"]["checkpoint_files"]
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    (ref,) = manifest["checkpoint_files"].values()
    mine = {k: v["shape"] for k, v in files["model*.safetensors"]["tensors"].items()}
    theirs = {k: v["shape"] for k, v in ref["tensors"].items()}
    assert mine == theirs and len(mine) == 1372
    # the optional generation vision tower is listed on its own, as the upstream manifest lists it
    tower = {k: v["shape"] for k, v in files["model*.safetensors (optional gen_vision_tower)"]["tensors"].items()}
    eva = manifest["gen_vision_tower_eva_clip"]["tensors"]
    assert tower == {k: v["shape"] for k, v in eva.items()} and len(tower) == 772
    assert report["parameters"]["total"] == 9_657_406_368  # the manifest header's count (vocabulary 152064)
    assert report["parameters"]["dit"] == 1_365_010_336


def test_roles_adapt_the_language_model_and_the_generator_also_the_dit(bb) -> None:
    """Proposer and solver adapt only LLM projections; the generator adds the DiT; nothing touches the vision tower."""
    names = {role: [n for n, _ in bb.adapters.named_parameters(role)] for role in bb.roles}
    for role, ns in names.items():
        assert ns and not any(".visual." in n for n in ns), role
    assert not any(".dit." in n for n in names["solver"] + names["proposer"])
    assert any(".dit.model.layers.0.attn2.to_q.lora_A" in n for n in names["generator"])
    # LLM: 2 layers x 7 projections; DiT: 2 layers x (3 + 4 attention + 3 feed-forward), A and B each
    assert len(names["solver"]) == 2 * 7 * 2
    assert len(names["generator"]) == (2 * 7 + 2 * 10) * 2


def test_real_image_targets_without_a_tower_are_skipped_and_counted(bb) -> None:
    """Without the generation vision tower a real image cannot become DiT targets: its row weighs 0 and is counted."""
    from asg.shapes import render, scene_for

    img = render(scene_for("test", 3, 0), 64)
    with bb.use_role("generator"):
        gen = bb.generate_images(["a red circle"], seed=1)
    tower = bb.net["gen_tower"]
    del bb.net["gen_tower"]
    try:
        out = bb.generator_loss(["a red circle", "a blue square"], [gen[0], img], seed=0)
    finally:
        bb.net["gen_tower"] = tower
    assert out.diagnostics["real_targets_skipped"] == 1.0
    assert float(out.per_sample[1]) == 0.0 and float(out.per_sample[0]) > 0.0
    torch.testing.assert_close(out.loss.detach(), out.per_sample.detach().mean())


def test_save_then_load_round_trip(tmp_path) -> None:
    """A tiny BLIP3o saved in the release layout loads back with identical tensors, answers and images."""
    a = Blip3oBackbone.load(preset="tiny", seed=2, adapters=False)
    a.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion-decoder" / "unet").is_dir()
    b = Blip3oBackbone.load(preset="full", model=tmp_path, adapters=False)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    p, s = [Prompt("Name a shape.")], SamplingParams(temperature=0.0, max_new_tokens=4)
    assert a.generate_text(p, s)[0].token_ids == b.generate_text(p, s)[0].token_ids
    ia, ib = a.generate_images(["a red circle"], seed=3)[0], b.generate_images(["a red circle"], seed=3)[0]
    assert ia.image.tobytes() == ib.image.tobytes()


def test_bad_folders_and_presets_are_named(tmp_path) -> None:
    """A missing folder or config, an unknown preset and the full model without weights each say what is wrong."""
    with pytest.raises(DataError, match="does not exist"):
        Blip3oBackbone.load(preset="full", model=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lacks config.json"):
        Blip3oBackbone.load(preset="full", model=tmp_path / "empty")
    with pytest.raises(ConfigError, match="valid presets: full, tiny"):
        Blip3oBackbone.load(preset="8b")
    with pytest.raises(ConfigError, match="needs its checkpoint"):
        Blip3oBackbone.load(preset="full")


def test_registered_through_its_entry_point() -> None:
    """The asg-blip3o distribution registers `blip3o` through its entry point in group `asg`."""
    from asg.plugins import get_backbone_class, get_host

    assert get_backbone_class("blip3o") is Blip3oBackbone
    record = next(r for r in get_host().to_json() if r["name"] == "blip3o")
    assert record["distribution"] == "asg-blip3o" and record["error"] is None


def test_asg_train_runs_both_phases(tmp_path) -> None:
    """Five steps of recipe `demo` (3 understanding, 2 generation) complete with a tiny BLIP3o."""
    from asg.cli import main

    images, run = tmp_path / "images", tmp_path / "run"
    assert main(["data", "shapes", "--out", str(images), "--n", "12"]) == 0
    assert main(["train", "--backbone", "blip3o", "--preset", "tiny", "--images", str(images), "--recipe", "demo",
                 "--steps", "5", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["U", "U", "U", "G", "G"]
    assert any((run / "checkpoints").iterdir())


def test_gpu_smoke_flow_runs_on_a_cpu_with_a_tiny_folder(tmp_path, capsys) -> None:
    """The smoke script skips cleanly here, and its phases run end to end on a tiny folder."""
    from asg.testing.smoke import run
    from asg_blip3o.smoke import main

    assert main(["--model", str(tmp_path / "nowhere")]) == 0
    assert capsys.readouterr().out.startswith("blip3o smoke skipped:")
    folder = tmp_path / "ckpt"
    Blip3oBackbone.load(preset="tiny", seed=1, adapters=False).save_pretrained(folder)
    report = run("blip3o", folder, tmp_path / "out", size=32, steps=2, device="cpu", dtype="float32")
    assert report["train_rc"] == 0 and report["train_phases"] == ["U", "G"]
    assert (tmp_path / "out" / "generated.png").is_file()
