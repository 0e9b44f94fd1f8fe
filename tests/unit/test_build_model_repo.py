"""Tests for scripts/build_model_repo.py: the example repository must rebuild offline, identically."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.helpers import load_script

#: Two whole builds at once take minutes on two busy cores: each compiles an AOTInductor package
#: (~25 s of CPU), and the two compiles take turns (see export_torch_aoti).
pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "build_model_repo.py"


@pytest.fixture(scope="module")
def build() -> types.ModuleType:
    return load_script("build_model_repo")


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs of the script, as a user runs it (each a fresh process: TensorFlow numbers its
    functions per process), at the same time, into two different folders."""
    repos = (tmp_path_factory.mktemp("repo"), tmp_path_factory.mktemp("elsewhere") / "models")
    runs = [subprocess.Popen([sys.executable, str(SCRIPT), "--repo", str(repo)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT) for repo in repos]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output.decode(errors="replace")
    return repos


@pytest.fixture(scope="module")
def built_repo(two_builds: tuple[Path, Path]) -> Path:
    """One repository built by the script, shared by the tests that only read it."""
    return two_builds[0]


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_build_writes_the_repository_layout(built_repo: Path) -> None:
    for name, artefact in [("digits_onnx", "model.onnx"), ("digits_torchscript", "model.pt"),
                           ("digits_torch_export", "model.pt2"), ("digits_torch_aoti", "model.pt2"),
                           ("digits_savedmodel", "model.savedmodel"), ("digits_jax", "model.jax"),
                           ("digits_jax", "params.npz"), ("digits_tflite", "model.tflite"),
                           ("digits_tflite_int8", "model.tflite")]:
        assert (built_repo / name / "config.yaml").is_file()
        assert (built_repo / name / "1" / artefact).exists(), (name, artefact)
    assert (built_repo / "digits_savedmodel" / "1" / "model.savedmodel" / "saved_model.pb").is_file()


def test_export_is_byte_for_byte_reproducible(two_builds: tuple[Path, Path]) -> None:
    """A second, independent build (training included) must give the very same bytes, in every format,
    although it lies in another folder (no format may record where it was built)."""
    first, second = _files(two_builds[0]), _files(two_builds[1])
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], name


def test_onnxruntime_matches_numpy_forward_and_is_accurate(build: types.ModuleType, built_repo: Path) -> None:
    model = build.train_digits_mlp()
    x_test, y_test = build.digits_test_split()
    assert x_test.dtype == np.float32 and x_test.shape == (len(y_test), 64)
    assert y_test.dtype == np.int64
    assert float(x_test.min()) >= 0.0 and float(x_test.max()) <= 1.0

    session = _session(built_repo / "digits_onnx" / "1" / "model.onnx")
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("input", "tensor(float)", ["batch", 64])
    assert (out.name, out.type, out.shape) == ("logits", "tensor(float)", ["batch", 10])

    (logits,) = session.run(["logits"], {"input": x_test})
    assert logits.dtype == np.float32 and logits.shape == (len(y_test), 10)
    np.testing.assert_allclose(logits, build.numpy_forward(model, x_test), rtol=0, atol=1e-5)

    onnx_accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
    assert onnx_accuracy >= 0.9
    assert onnx_accuracy == pytest.approx(model.test_accuracy)


def test_second_run_writes_nothing_and_keeps_config(
    build: types.ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    formats = ["onnx", "jax"]  # the quick ones: the logic is the same for every format
    config = tmp_path / "digits_onnx" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# edited by hand\n")
    artefacts = [tmp_path / "digits_onnx" / "1" / "model.onnx", tmp_path / "digits_jax" / "1" / "model.jax"]
    assert build.build_repo(tmp_path, formats=formats) == [artefacts[0], tmp_path / "digits_jax" / "config.yaml",
                                                           artefacts[1]]
    assert "test accuracy" in capsys.readouterr().out
    assert build.build_repo(tmp_path, formats=formats) == []
    # --force rebuilds the models but still never touches the hand-written config.
    assert build.build_repo(tmp_path, force=True, formats=formats) == artefacts
    assert config.read_text() == "# edited by hand\n"
    with pytest.raises(ValueError, match="unknown formats"):
        build.build_repo(tmp_path, formats=["onnx", "caffe"])


def test_committed_configs_match_the_script(build: types.ModuleType) -> None:
    """The script writes the same configs a fresh repository would get as the ones committed here."""
    for example in build.EXAMPLES.values():
        committed = REPO_ROOT / "model_repo" / example.name / "config.yaml"
        assert committed.read_text() == example.config, example.name
        config = yaml.safe_load(committed.read_text())
        assert config["max_batch_size"] == 64
        assert config.get("inputs", [{"name": "input", "datatype": "FP32", "shape": [64]}]) == [
            {"name": "input", "datatype": "FP32", "shape": [64]}]
        assert config.get("outputs", [{"name": "logits", "datatype": "FP32", "shape": [10]}]) == [
            {"name": "logits", "datatype": "FP32", "shape": [10]}]
    assert sorted(p.parent.name for p in (REPO_ROOT / "model_repo").glob("*/config.yaml")) == sorted(
        e.name for e in build.EXAMPLES.values())


#: Runs the script with scikit-learn unimportable, as on the GPU machine.
_WITHOUT_SKLEARN = ("import runpy, sys; sys.modules['sklearn'] = None; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_a_digits_bundle_builds_the_same_models_without_scikit_learn(built_repo: Path, tmp_path: Path) -> None:
    """``--save-digits`` here, ``--digits`` where scikit-learn is missing: the same bytes as a full build."""
    bundle = tmp_path / "digits.npz"
    subprocess.run([sys.executable, str(SCRIPT), "--save-digits", str(bundle)], check=True, capture_output=True)
    formats = ("onnx", "torchscript", "torch_export", "jax")
    repo = tmp_path / "repo"
    run = subprocess.run([sys.executable, "-c", _WITHOUT_SKLEARN, str(SCRIPT), "--repo", str(repo), "--digits",
                          str(bundle), "--formats", ",".join(formats)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    built = _files(built_repo)
    for path, data in _files(repo).items():
        assert data == built[path], path
    assert len(_files(repo)) == 2 * len(formats) + 1  # a config and a model file each; JAX's params.npz too
    refused = subprocess.run([sys.executable, "-c", _WITHOUT_SKLEARN, str(SCRIPT), "--repo", str(tmp_path / "int8"),
                              "--digits", str(bundle), "--formats", "tflite_int8"], capture_output=True, text=True,
                             check=False)
    assert refused.returncode != 0 and "this step needs scikit-learn" in refused.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), "--digits", str(tmp_path / "none.npz")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "no digits bundle (write one with --save-digits)" in missing.stderr
