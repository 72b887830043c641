"""VARGPT as an asg backbone: the full-size manifest, exact image log-probs, checkpoint folders, roles,
registration, the loop, and the GPU smoke flow on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from asg.errors import CapabilityError, ConfigError, DataError
from asg.types import Prompt, SamplingParams
from asg_vargpt.backbone import VargptBackbone


@pytest.fixture(scope="module")
def bb() -> VargptBackbone:
    return VargptBackbone.load(preset="tiny", seed=0)


def test_full_manifest_matches_the_release_checkpoint(fixture_dir, capsys) -> None:
    """`asg inspect vargpt --preset full --manifest` lists exactly the 1706 keys and shapes of the release shards."""
    from asg.cli import main

    assert main(["inspect", "vargpt", "--preset", "full", "--manifest"]) == 0
    report = json.loads(capsys.readouterr().out)
    (ours,) = report["manifest"]["checkpoint_files"].values()
    (ref,) = json.loads((fixture_dir / "manifest.json").read_text())["checkpoint_files"].values()
    mine = {k: v["shape"] for k, v in ours["tensors"].items()}
    assert mine == {k: v["shape"] for k, v in ref["tensors"].items()} and len(mine) == 1706
    assert report["parameters"]["total"] == ref["num_parameters"] == 10_948_395_235


def test_trace_log_probs_are_the_teacher_forced_ones(bb) -> None:
    """Re-scoring a generated image teacher-forced gives the sum of its trace's per-token log-probs, per sample."""
    with torch.no_grad(), bb.use_role("generator"):
        imgs = bb.generate_images(["a red circle", "two blue squares"], seed=4)
        lp = bb.image_token_logprobs([g.prompt for g in imgs], [g.trace for g in imgs])
    sums = torch.stack([g.trace.logprobs.sum() for g in imgs])
    torch.testing.assert_close(lp.float(), sums, atol=1e-3, rtol=1e-5)
    assert imgs[0].trace.token_ids.shape == (1 + 4 + 16, 32)  # scales 1x1, 2x2, 4x4; 32 bits per token
    assert float((lp[0] - lp[1]).abs()) > 1e-3, "log-probs are per sample, not a batch mean"
    assert bool((lp < 0).all())


def test_image_log_probs_train_only_the_generator(bb) -> None:
    """The exact image log-prob is differentiable into the generator's adapters (LLM and head), not the others."""
    with torch.no_grad(), bb.use_role("generator"):
        img = bb.generate_images(["a green triangle"], seed=2)[0]
    with bb.use_role("generator"):
        lp = bb.image_token_logprobs([img.prompt], [img.trace])
    lp.sum().backward()
    named = dict(bb.adapters.named_parameters("generator"))
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for n, p in named.items() if ".head." in n)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for n, p in named.items() if "language_model" in n)
    assert all(p.grad is None for role in ("proposer", "solver") for p in bb.trainable_parameters(role))
    for p in named.values():
        p.grad = None


def test_roles_never_touch_the_vision_tower_or_the_vae(bb) -> None:
    """Proposer and solver adapt the LLM's 14 projections; the generator also the head's blocks and projectors."""
    names = {role: [n for n, _ in bb.adapters.named_parameters(role)] for role in bb.roles}
    for role, ns in names.items():
        assert ns and not any(".visual." in n or "vae_local" in n for n in ns), role
    assert len(names["solver"]) == 2 * 7 * 2
    # head: 4 blocks x (sa.proj, ca.mat_q, ca.proj, ffn.fc1, ffn.fc2) + 2 projectors x 2 linears, A and B each
    assert len(names["generator"]) == (2 * 7 + 4 * 5 + 4) * 2


def test_flow_loss_is_refused_with_the_reason(bb) -> None:
    """An autoregressive backbone has no flow-matching loss; asking for one says what to use instead."""
    with pytest.raises(CapabilityError, match="image_token_logprobs"):
        bb.generator_loss(["x"], [None])


def test_save_then_load_round_trip(tmp_path) -> None:
    """A tiny VARGPT saved in the release layout loads back with identical tensors, answers and images."""
    a = VargptBackbone.load(preset="tiny", seed=2, adapters=False)
    a.save_pretrained(tmp_path)
    b = VargptBackbone.load(preset="full", model=tmp_path, adapters=False)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    p, s = [Prompt("Name a shape.")], SamplingParams(temperature=0.0, max_new_tokens=4)
    assert a.generate_text(p, s)[0].token_ids == b.generate_text(p, s)[0].token_ids
    ia, ib = a.generate_images(["a red circle"], seed=3)[0], b.generate_images(["a red circle"], seed=3)[0]
    assert ia.image.tobytes() == ib.image.tobytes()


def test_bad_folders_and_presets_are_named(tmp_path) -> None:
    """A missing folder or config, an unknown preset and the full model without weights each say what is wrong."""
    with pytest.raises(DataError, match="does not exist"):
        VargptBackbone.load(preset="full", model=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lacks config.json"):
        VargptBackbone.load(preset="full", model=tmp_path / "empty")
    with pytest.raises(ConfigError, match="valid presets: full, tiny"):
        VargptBackbone.load(preset="2b")
    with pytest.raises(ConfigError, match="needs its checkpoint"):
        VargptBackbone.load(preset="full")


def test_registered_through_its_entry_point() -> None:
    """The asg-vargpt distribution registers `vargpt` through its entry point in group `asg`."""
    from asg.plugins import get_backbone_class, get_host

    assert get_backbone_class("vargpt") is VargptBackbone
    record = next(r for r in get_host().to_json() if r["name"] == "vargpt")
    assert record["distribution"] == "asg-vargpt" and record["error"] is None


def test_asg_train_runs_both_phases(tmp_path) -> None:
    """Five steps of recipe `demo` (3 understanding, 2 generation) complete with a tiny VARGPT."""
    from asg.cli import main

    images, run = tmp_path / "images", tmp_path / "run"
    assert main(["data", "shapes", "--out", str(images), "--n", "12"]) == 0
    assert main(["train", "--backbone", "vargpt", "--preset", "tiny", "--images", str(images), "--recipe", "demo",
                 "--steps", "5", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["U", "U", "U", "G", "G"]
    assert any((run / "checkpoints").iterdir())


def test_gpu_smoke_flow_runs_on_a_cpu_with_a_tiny_folder(tmp_path, capsys) -> None:
    """The smoke script skips cleanly here, and its phases run end to end on a tiny folder."""
    from asg.testing.smoke import run
    from asg_vargpt.smoke import main

    assert main(["--model", str(tmp_path / "nowhere")]) == 0
    assert capsys.readouterr().out.startswith("vargpt smoke skipped:")
    folder = tmp_path / "ckpt"
    VargptBackbone.load(preset="tiny", seed=1, adapters=False).save_pretrained(folder)
    report = run("vargpt", folder, tmp_path / "out", size=64, steps=3, device="cpu", dtype="float32")
    assert report["train_rc"] == 0 and report["train_phases"] == ["U", "G"]
    assert (tmp_path / "out" / "generated.png").is_file()
