"""What KServe mounts at /mnt/models, laid out as a one-model repository (gateway.repository.mounted)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.repository.layout import scan_repository
from gateway.repository.mounted import MountError, stage
from tests.helpers import ROOT


def _files(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(b"x")
    return root


def _tree(root: Path) -> dict[str, str]:
    """Each staged path -> what it links to, relative to the mount ("" for folders and written files)."""
    return {str(p.relative_to(root)): (p.readlink().name if p.is_symlink() else "")
            for p in sorted(root.rglob("*")) if p.is_symlink() or not p.parent.is_symlink()}


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    return tmp_path / "mnt"


def test_a_model_file_of_any_name_is_version_one_under_its_adapters_name(mount: Path, tmp_path: Path) -> None:
    _files(mount, "resnet50.onnx")
    repo = stage(mount, "digits", tmp_path / "staged")
    assert _tree(repo) == {"digits": "", "digits/1": "", "digits/1/model.onnx": "resnet50.onnx",
                           "digits/1/resnet50.onnx": "resnet50.onnx", "digits/config.yaml": ""}
    assert "platform: onnx" in (repo / "digits" / "config.yaml").read_text()
    [entry] = scan_repository(repo)
    assert entry.name == "digits" and entry.versions == (1,) and entry.config is not None
    assert entry.config.platform == "onnx" and entry.error is None


def test_a_pt2_is_an_aoti_package_or_a_torch_export_program(mount: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(mount / "digits.pt2", "w") as archive:
        archive.writestr("digits/data/aotinductor/model/abc.wrapper.so", b"")
    repo = stage(mount, "digits", tmp_path / "staged")
    assert "platform: torch_aoti" in (repo / "digits" / "config.yaml").read_text()
    assert (repo / "digits" / "1" / "model.pt2").readlink().name == "digits.pt2"


def test_a_savedmodels_own_files_are_version_one(mount: Path, tmp_path: Path) -> None:
    _files(mount, "saved_model.pb", "variables/variables.index")
    repo = stage(mount, "flowers", tmp_path / "staged")
    assert (repo / "flowers" / "1" / "model.savedmodel").readlink() == mount
    assert "platform: savedmodel" in (repo / "flowers" / "config.yaml").read_text()


def test_tf_serving_version_folders_are_the_versions(mount: Path, tmp_path: Path) -> None:
    _files(mount, "0001/saved_model.pb", "0001/variables/", "0002/saved_model.pb")
    repo = stage(mount, "flowers", tmp_path / "staged")
    assert (repo / "flowers" / "1" / "model.savedmodel").readlink() == mount / "0001"
    assert (repo / "flowers" / "2" / "model.savedmodel").readlink() == mount / "0002"


def test_a_triton_model_folder_keeps_its_config(mount: Path, tmp_path: Path) -> None:
    _files(mount, "config.pbtxt", "1/model.pt")
    repo = stage(mount, "cifar10", tmp_path / "staged")
    assert (repo / "cifar10" / "config.pbtxt").readlink() == mount / "config.pbtxt"
    assert (repo / "cifar10" / "1" / "model.pt").readlink() == mount / "1" / "model.pt"
    assert not (repo / "cifar10" / "config.yaml").exists()


def test_a_jax_export_brings_its_params(mount: Path, tmp_path: Path) -> None:
    _files(mount, "model.jax", "params.npz")
    repo = stage(mount, "digits", tmp_path / "staged")
    assert {p.name for p in (repo / "digits" / "1").iterdir()} == {"model.jax", "params.npz"}


def test_a_triton_repository_is_served_as_it_is(mount: Path, tmp_path: Path) -> None:
    _files(mount, "cifar10/config.pbtxt", "cifar10/1/model.pt", "style/1/model.onnx")
    assert stage(mount, "isvc", tmp_path / "staged") == mount


@pytest.mark.parametrize(("files", "fragments"), [
    ((), ["found nothing", "expected one model file (*.onnx"]),
    (("model.pkl",), ["found model.pkl, of no type TensorGate serves", "a SavedModel (saved_model.pb)"]),
    (("model.onnx", "model.pt"), ["2 model files (model.onnx, model.pt)", "keep one"]),
    (("a.onnx", "b.onnx"), ["2 model files (a.onnx, b.onnx)"]),
    (("model.pt",), ["TorchScript model carries no input or output names", "config.yaml"]),
    (("1/model.onnx", "model.onnx"), ["both version folders (1/) and model files (model.onnx)"]),
    (("1/model.onnx", "2/model.pt"), ["different formats (onnx, torchscript)"]),
    (("config.yaml", "config.pbtxt", "model.onnx"), ["both config.yaml and config.pbtxt"]),
])
def test_a_wrong_layout_says_what_was_mounted_and_what_was_expected(
        mount: Path, tmp_path: Path, files: tuple[str, ...], fragments: list[str]) -> None:
    _files(mount, *files)
    with pytest.raises(MountError) as error:
        stage(mount, "digits", tmp_path / "staged")
    assert str(mount) in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_the_model_name_is_one_folder_name(mount: Path, tmp_path: Path) -> None:
    _files(mount, "model.onnx")
    with pytest.raises(MountError, match=re.escape("--model-name: model name '../x' is not a folder name")):
        stage(mount, "../x", tmp_path / "staged")


def test_the_server_refuses_to_start_on_a_wrong_layout(mount: Path) -> None:
    _files(mount, "weights.bin")
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", f"--model-repo={mount}", "--model-name=digits"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert f"{mount}: KServe mounted no model TensorGate can serve (found weights.bin" in run.stderr
