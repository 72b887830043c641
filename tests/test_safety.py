"""Safety: what asg reads, executes, fetches and writes.

Static checks walk every Python file of the repository (core, kernels, plugins, benchmarks, docs, tests);
behavioural checks exercise asg.safety and the places that use it."""

from __future__ import annotations

import ast
import collections
import functools
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from asg.errors import ConfigError, DataError
from asg.safety import ALLOW_DOWNLOADS_ENV, DownloadDisabledError, safe_child, safe_name, snapshot_download

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("core", "kernels", "plugins", "benchmarks", "docs", "tests")
SKIPPED_DIRS = {"build", "dist", ".venv", "__pycache__", "node_modules", ".git"}
HUB_FETCHERS = {"snapshot_download", "hf_hub_download", "hf_hub_url", "cached_download", "HfApi", "HfFileSystem"}
SAFETY_MODULE = ROOT / "core" / "asg" / "safety.py"


def _sources() -> list[Path]:
    files = []
    for top in SCANNED:
        for dirpath, dirs, names in os.walk(ROOT / top):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            files += [Path(dirpath) / n for n in names if n.endswith(".py")]
    return sorted(files)


SOURCES = _sources()


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for Attribute(Name('torch'), 'load'); '' for anything not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


PICKLY = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _check_call(node: ast.Call, at: str, found: dict[str, list[str]]) -> None:
    name = _dotted(node.func)
    if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
        found["torch_load"].append(f"{at} torch.load without weights_only=True")
    if name.startswith("torch.hub.") or name.endswith("load_state_dict_from_url"):
        found["torch_load"].append(f"{at} {name}")
    if _is_const(_kw(node, "allow_pickle"), True):
        found["pickle"].append(f"{at} {name}(allow_pickle=True)")
    loader = _kw(node, "Loader")
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all") or (
            name == "yaml.load" and (loader is None or "Safe" not in ast.unparse(loader))):
        found["pickle"].append(f"{at} {name}")
    if name in ("eval", "exec"):
        found["remote_code"].append(f"{at} {name}()")
    if _is_const(_kw(node, "shell"), True):
        found["remote_code"].append(f"{at} {name}(shell=True)")
    if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
        found["from_pretrained_calls"].append(at)
        if not _is_const(_kw(node, "local_files_only"), True):
            found["from_pretrained"].append(f"{at} from_pretrained without local_files_only=True")
    if name.startswith("huggingface_hub.") and name.split(".")[-1] in HUB_FETCHERS:
        found["hub"].append(f"{at} {name}")


@functools.cache
def _findings() -> dict[str, list[str]]:
    """One walk over every source: what each check below objects to, as 'file:line what'."""
    return _scan((p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in SOURCES)


def _scan(files: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = collections.defaultdict(list)
    safety = SAFETY_MODULE.relative_to(ROOT).as_posix()
    for where, text in files:
        for node in ast.walk(ast.parse(text, filename=where)):
            at = f"{where}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                _check_call(node, at, found)
            elif isinstance(node, ast.Import):
                found["pickle"] += [f"{at} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLY]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] in PICKLY:
                    found["pickle"].append(f"{at} from {module} import ...")
                if module in ("torch", "torch.serialization") and any(a.name == "load" for a in node.names):
                    found["torch_load"].append(f"{at} from {module} import load")  # would hide calls from the check
                if module.startswith("huggingface_hub") and where != safety:
                    found["hub"] += [f"{at} import {a.name}" for a in node.names if a.name in HUB_FETCHERS]
            elif isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if isinstance(node.value, ast.Constant) and node.value.value is not False:
                    found["remote_code"].append(f"{at} trust_remote_code={node.value.value!r}")
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_const(v, True):
                        found["remote_code"].append(f"{at} {{'trust_remote_code': True}}")
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if _dotted(t).endswith(("MAX_IMAGE_PIXELS", "LOAD_TRUNCATED_IMAGES")):
                        found["pil"].append(f"{at} {_dotted(t)} = ...")
    return {k: v for k, v in found.items() if v}


def test_the_scan_sees_the_whole_tree() -> None:
    """The static checks below read every package (a moved folder would silently escape them)."""
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    for expected in ("core/asg/train/data.py", "core/asg/safety.py", "kernels/api.py", "benchmarks/_runner.py",
                     "plugins/asg-bagel/src/asg_bagel/backbone.py", "docs/example-plugin/asg_example/model.py"):
        assert expected in names
    assert len(SOURCES) > 100


BAD_SNIPPET = """
import pickle
import numpy as np, torch, yaml, subprocess
from huggingface_hub import hf_hub_download
from transformers import AutoModel
state = torch.load("x.bin")
arr = np.load("x.npy", allow_pickle=True)
cfg = yaml.load(open("x.yaml"))
model = AutoModel.from_pretrained("owner/name", trust_remote_code=True)
kwargs = {"trust_remote_code": True}
eval("1 + 1")
subprocess.run("ls", shell=True)
PIL.Image.MAX_IMAGE_PIXELS = None
"""
GOOD_SNIPPET = """
import torch, yaml
from asg.safety import snapshot_download
state = torch.load("x.bin", map_location="cpu", weights_only=True)
cfg = yaml.safe_load(open("x.yaml"))
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=args.trust_remote_code)
net.eval()
"""


def test_the_checks_catch_each_pattern() -> None:
    """The scanner flags every unsafe pattern of a snippet, and none of the safe spellings."""
    found = _scan([("bad.py", BAD_SNIPPET)])
    assert {k: len(v) for k, v in found.items()} == {"pickle": 3, "hub": 1, "torch_load": 1, "from_pretrained_calls": 1,
                                                     "from_pretrained": 1, "remote_code": 4, "pil": 1}
    found = _scan([("good.py", GOOD_SNIPPET)])
    assert {k: len(v) for k, v in found.items()} == {"from_pretrained_calls": 2}


def test_torch_load_always_uses_weights_only_true() -> None:
    """torch.load unpickles arbitrary objects unless weights_only=True; torch.hub is never used."""
    assert not _findings().get("torch_load")


def test_no_pickle_and_no_unsafe_yaml_or_numpy_loads() -> None:
    """No pickle-family module is imported; numpy never allows pickles; yaml only through a safe loader."""
    assert not _findings().get("pickle")


def test_remote_code_is_never_trusted_by_default() -> None:
    """trust_remote_code is never a literal True (a user-controlled variable is the only other way in),
    and no source calls eval/exec or runs a shell."""
    assert not _findings().get("remote_code")


def test_from_pretrained_is_local_only() -> None:
    """Every transformers/diffusers from_pretrained call passes local_files_only=True."""
    assert len(_findings().get("from_pretrained_calls", [])) >= 3  # the plugins' tokenizers, BLIP3o's decoder
    assert not _findings().get("from_pretrained")


def test_hub_downloads_only_through_the_opt_in_guard() -> None:
    """huggingface_hub's fetchers are imported only by asg.safety, which refuses without ASG_ALLOW_DOWNLOADS."""
    assert not _findings().get("hub")


def test_pil_globals_are_not_loosened() -> None:
    """No source turns off PIL's decompression-bomb limit or accepts truncated images process-wide."""
    assert not _findings().get("pil")


# -- behaviour ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape.png", "../../etc/passwd", "/etc/passwd", "a/b.png", "a\\b.png", "..",
                                  ".", ".hidden.png", "C:evil.png", "nul\x00.png", "line\nbreak.png", "", "   ",
                                  "NUL.png", "con", "trailing.", "x" * 300, "what?.png"])
def test_safe_child_refuses_names_that_could_leave_the_directory(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match="bad file name"):
        safe_child(tmp_path, name)


def test_safe_child_refuses_a_symbolic_link_out_and_accepts_plain_names(tmp_path) -> None:
    outside = tmp_path / "outside.png"
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "cand_0.png")
    with pytest.raises(ConfigError, match="resolves outside"):
        safe_child(run, "cand_0.png")
    assert safe_child(run, "cand_1_r0.910.png") == run / "cand_1_r0.910.png"
    assert safe_child(run, "café – ünïcode.png").parent == run


@pytest.mark.parametrize("text", ["../../etc/passwd", "/abs/path", "..", "...", "C:\\Windows\\x", "a red\x00cube",
                                  "two red squares; rm -rf ~", "NUL", "", " . ", "x" * 400, "é" * 200,
                                  "caf\udce9 latin-1", "<script>?*|"])
def test_safe_name_neutralises_any_text_into_one_file_inside_the_directory(tmp_path, text) -> None:
    """A name derived from a prompt or label becomes one plain file name under the directory."""
    name = safe_name(text)
    path = safe_child(tmp_path, name)
    assert path.parent == tmp_path and path.resolve().parent == tmp_path.resolve()
    path.with_name(path.name + ".png").write_bytes(b"x")
    assert [p.parent for p in tmp_path.rglob("*")] == [tmp_path]


def test_run_dir_save_images_rejects_crafted_names(tmp_path) -> None:
    """RunDir.save_images never writes outside samples/step_*/ whatever the names say."""
    from PIL import Image

    from asg.train.run import RunDir

    run = RunDir.create(tmp_path / "run", config={}, resume=False)
    image = Image.new("RGB", (2, 2))
    for name in ("../../escape", "/tmp/abs", "a\\b", ".hidden", ""):
        with pytest.raises(ConfigError, match="bad file name"):
            run.save_images(1, [image], [name])
    assert not (tmp_path / "escape.png").exists() and not list(tmp_path.glob("*.png"))


def test_downloads_are_refused_unless_the_user_allows_them(monkeypatch) -> None:
    """asg.safety.snapshot_download calls huggingface_hub only with ASG_ALLOW_DOWNLOADS=1."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or "/cache/x")
    monkeypatch.delenv(ALLOW_DOWNLOADS_ENV, raising=False)
    with pytest.raises(DownloadDisabledError, match=f"'owner/model'.*set {ALLOW_DOWNLOADS_ENV}=1"):
        snapshot_download(repo_id="owner/model", allow_patterns=["*.json"])
    monkeypatch.setenv(ALLOW_DOWNLOADS_ENV, "0")
    with pytest.raises(DownloadDisabledError):
        snapshot_download("owner/model")
    assert calls == []
    monkeypatch.setenv(ALLOW_DOWNLOADS_ENV, "1")
    assert snapshot_download(repo_id="owner/model", allow_patterns=["*.json"]) == "/cache/x"
    assert calls == [{"repo_id": "owner/model", "allow_patterns": ["*.json"]}]


def test_bagel_hub_id_or_mistyped_path_does_not_reach_the_network(monkeypatch, tmp_path) -> None:
    """A --model that is not a folder and looks like a hub id (or a mistyped relative path) is refused
    without a download unless downloads are allowed."""
    backbone = pytest.importorskip("asg_bagel.backbone")
    import huggingface_hub

    def no_network(**kw):
        raise AssertionError(f"downloaded {kw}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.delenv(ALLOW_DOWNLOADS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for model in ("ByteDance-Seed/BAGEL-7B-MoT", "ckpts/BAGEL"):
        with pytest.raises(DataError, match=f"{model} is neither a local folder.*{ALLOW_DOWNLOADS_ENV}=1"):
            backbone.resolve_checkpoint(model)
    (tmp_path / "ckpts" / "BAGEL").mkdir(parents=True)
    assert backbone.resolve_checkpoint("ckpts/BAGEL") == Path("ckpts/BAGEL")  # a folder is used as is
