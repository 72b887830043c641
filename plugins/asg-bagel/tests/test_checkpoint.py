"""Loading and saving BAGEL checkpoint folders, the full-size manifest, and the plugin's registration."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from asg.errors import ConfigError, DataError
from asg.types import Prompt, SamplingParams
from asg_bagel.backbone import BagelBackbone


def test_full_manifest_matches_the_release_checkpoint(fixture_dir, capsys) -> None:
    """`asg inspect bagel --preset full --manifest` lists exactly the keys and shapes of ema.safetensors and ae.safetensors."""
    from asg.cli import main

    assert main(["inspect", "bagel", "--preset", "full", "--manifest"]) == 0
    report = json.loads(capsys.readouterr().out)
    ours = report["manifest"]["checkpoint_files"]
    ref = json.loads((fixture_dir / "manifest.json").read_text())["checkpoint_files"]
    assert set(ours) == set(ref) == {"ema.safetensors", "ae.safetensors"}
    for name in ref:
        mine = {k: v["shape"] for k, v in ours[name]["tensors"].items()}
        theirs = {k: v["shape"] for k, v in ref[name]["tensors"].items()}
        assert mine == theirs, f"{name}: {sorted(set(mine) ^ set(theirs))[:5]}"
    assert len(ours["ema.safetensors"]["tensors"]) == 1223 and len(ours["ae.safetensors"]["tensors"]) == 244
    # 14,607,260,128 (ema) + 83,819,683 (ae), as the manifest's header states
    assert report["parameters"]["total"] == 14_607_260_128 + 83_819_683


def test_full_preset_without_a_folder_explains_what_it_needs() -> None:
    """Asking for the full model's weights without a checkpoint folder names the files to provide."""
    with pytest.raises(ConfigError, match="ema.safetensors, ae.safetensors"):
        BagelBackbone.load(preset="full")


def test_save_then_load_round_trip(tmp_path) -> None:
    """A tiny BAGEL written with save_pretrained loads back with identical tensors and identical greedy answers."""
    a = BagelBackbone.load(preset="tiny", seed=3, adapters=False)
    a.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json",
                                                   "asg_bagel.json", "tokenizer.json"}
    assert json.loads((tmp_path / "vit_config.json").read_text())["num_hidden_layers"] == 3  # hub convention: built + 1
    b = BagelBackbone.load(preset="tiny", model=tmp_path, adapters=False)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    p, s = [Prompt("Name a shape.")], SamplingParams(temperature=0.0, max_new_tokens=5)
    assert a.generate_text(p, s)[0].token_ids == b.generate_text(p, s)[0].token_ids
    ae = load_file(str(tmp_path / "ae.safetensors"))
    assert "decoder.up.0.block.0.conv1.weight" in ae, "ae.safetensors must use the release's (BFL) key names"


def _folder(src, tmp_path, edit):
    out = tmp_path / "ckpt"
    shutil.copytree(src, out)
    edit(out)
    return out


def test_missing_or_unexpected_keys_are_named(upstream_folder, tmp_path) -> None:
    """A weights file with a tensor missing or extra fails to load, naming the file and the key."""
    def drop(out):
        state = load_file(str(out / "ema.safetensors"))
        del state["llm2vae.bias"]
        state["extra.weight"] = torch.zeros(1)
        save_file(state, str(out / "ema.safetensors"))
    with pytest.raises(DataError, match=r"ema\.safetensors.*missing key\(s\) \['llm2vae\.bias'\].*\['extra\.weight'\]"):
        BagelBackbone.load(preset="tiny", model=_folder(upstream_folder, tmp_path, drop), adapters=False)


def test_wrong_shape_is_named(upstream_folder, tmp_path) -> None:
    """A tensor of the wrong shape fails to load with its name, its shape and the expected one."""
    def reshape(out):
        state = load_file(str(out / "ema.safetensors"))
        state["vae2llm.bias"] = torch.zeros(7)
        save_file(state, str(out / "ema.safetensors"))
    with pytest.raises(DataError, match=r"vae2llm\.bias is \(7,\), expected \(64,\)"):
        BagelBackbone.load(preset="tiny", model=_folder(upstream_folder, tmp_path, reshape), adapters=False)


@pytest.mark.parametrize("name", ["ema.safetensors", "llm_config.json", "vit_config.json", "ae.safetensors"])
def test_missing_files_are_named(upstream_folder, tmp_path, name) -> None:
    """A checkpoint folder lacking one of its files fails with the folder and the file's name."""
    out = _folder(upstream_folder, tmp_path, lambda o: (o / name).unlink())
    with pytest.raises((DataError, FileNotFoundError), match=name.split(".")[0]):
        BagelBackbone.load(preset="tiny", model=out, adapters=False)


def test_model_safetensors_is_accepted_instead_of_ema(upstream_folder, tmp_path) -> None:
    """Upstream also publishes the weights as model.safetensors; the loader takes either."""
    out = _folder(upstream_folder, tmp_path, lambda o: (o / "ema.safetensors").rename(o / "model.safetensors"))
    bb = BagelBackbone.load(preset="tiny", model=out, adapters=False)
    ref = load_file(str(upstream_folder / "ema.safetensors"))
    assert torch.equal(bb.bagel.state_dict()["llm2vae.weight"], ref["llm2vae.weight"])


def test_unknown_preset_and_bad_extra_keys_are_rejected(upstream_folder, tmp_path) -> None:
    """Unknown presets and unknown keys in asg_bagel.json are errors listing the valid choices."""
    with pytest.raises(ConfigError, match="valid presets: full, tiny"):
        BagelBackbone.load(preset="huge")

    def bad(out):
        data = json.loads((out / "asg_bagel.json").read_text())
        data["max_latent_sise"] = 4
        (out / "asg_bagel.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key.*max_latent_sise"):
        BagelBackbone.load(preset="tiny", model=_folder(upstream_folder, tmp_path, bad), adapters=False)


def test_registered_through_its_entry_point() -> None:
    """The asg-bagel distribution registers `bagel` through its entry point in group `asg`."""
    from asg.plugins import get_backbone_class, get_host

    assert get_backbone_class("bagel") is BagelBackbone
    record = next(r for r in get_host().to_json() if r["name"] == "bagel")
    assert record["distribution"] == "asg-bagel" and record["error"] is None
    assert record["registered"]["backbones"] == ["bagel"]


def test_hub_id_without_network_is_a_clear_error(monkeypatch) -> None:
    """A hub id that cannot be fetched (offline) fails naming the id and asking for a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"no-such-owner/BAGEL-test is neither a local folder nor a downloadable hub repository"):
        BagelBackbone.load(preset="full", model="no-such-owner/BAGEL-test")
    with pytest.raises(DataError, match="folder missing/dir does not exist"):
        BagelBackbone.load(preset="tiny", model="./missing/dir")


@pytest.mark.parametrize("file,edit,message", [
    ("llm_config.json", {"qk_norm": False}, "qk_norm=false"),
    ("llm_config.json", {"layer_module": "Qwen2DecoderLayer"}, "layer_module 'Qwen2DecoderLayer' is not supported"),
    ("vit_config.json", {"rope": True}, "rope=true"),
    ("vit_config.json", {"num_hidden_layers": 1}, "num_hidden_layers must be at least 2"),
])
def test_wrong_configs_are_named(upstream_folder, tmp_path, file, edit, message) -> None:
    """A config that is not BAGEL's layout fails naming the file, the field and what is supported."""
    def change(out):
        data = json.loads((out / file).read_text())
        data.update(edit)
        (out / file).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"{file}.*{message}" if file == "vit_config.json" else message):
        BagelBackbone.load(preset="tiny", model=_folder(upstream_folder, tmp_path, change), adapters=False)


def test_gpu_smoke_skips_cleanly_without_a_gpu_or_checkpoint(tmp_path, capsys) -> None:
    """The GPU smoke script exits 0 with a one-line reason when it cannot run here."""
    from asg_bagel.smoke import main

    assert main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("bagel smoke skipped:") and ("no CUDA GPU" in line or "no checkpoint folder" in line)
    assert not (tmp_path / "o").exists()


def test_gpu_smoke_flow_runs_on_a_cpu_with_a_tiny_folder(tmp_path) -> None:
    """The smoke script's phases (load, answer, generate, one U and one G step) run end to end on a tiny folder."""
    from asg.testing.smoke import run

    folder = tmp_path / "ckpt"
    BagelBackbone.load(preset="tiny", seed=1, adapters=False).save_pretrained(folder)
    report = run("bagel", folder, tmp_path / "out", size=32, steps=2, device="cpu", dtype="float32")
    assert report["train_rc"] == 0 and report["train_phases"] == ["U", "G"]
    assert report["generate_size"] == 32 and report["weights_gib"] is None
    assert (tmp_path / "out" / "generated.png").is_file() and (tmp_path / "out" / "question_image.png").is_file()
    assert isinstance(report["answer"], str)
