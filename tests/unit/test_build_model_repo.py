"""Tests for scripts/build_model_repo.py: the example repository must rebuild offline, identically."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.helpers import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build() -> types.ModuleType:
    return load_script("build_model_repo")


@pytest.fixture(scope="module")
def built_repo(build: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository built by the script, shared by the tests that only read it."""
    repo = tmp_path_factory.mktemp("repo")
    assert build.main(["--repo", str(repo)]) == 0
    return repo


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def test_build_writes_the_repository_layout(built_repo: Path) -> None:
    assert (built_repo / "digits_onnx" / "config.yaml").is_file()
    assert (built_repo / "digits_onnx" / "1" / "model.onnx").is_file()


def test_export_is_byte_for_byte_reproducible(
    build: types.ModuleType, built_repo: Path, tmp_path: Path
) -> None:
    """A second, independent build (training included) must give the very same bytes."""
    assert build.main(["--repo", str(tmp_path)]) == 0
    first = (built_repo / "digits_onnx" / "1" / "model.onnx").read_bytes()
    second = (tmp_path / "digits_onnx" / "1" / "model.onnx").read_bytes()
    assert first == second


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
    config = tmp_path / "digits_onnx" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# edited by hand\n")
    assert build.build_repo(tmp_path) == [tmp_path / "digits_onnx" / "1" / "model.onnx"]
    assert "test accuracy" in capsys.readouterr().out
    assert build.build_repo(tmp_path) == []
    # --force rebuilds the model but still never touches the hand-written config.
    assert build.build_repo(tmp_path, force=True) == [tmp_path / "digits_onnx" / "1" / "model.onnx"]
    assert config.read_text() == "# edited by hand\n"


def test_committed_config_matches_the_script(build: types.ModuleType) -> None:
    """The script writes the same config a fresh repository would get as the one committed here."""
    committed = REPO_ROOT / "model_repo" / "digits_onnx" / "config.yaml"
    assert committed.read_text() == build.DIGITS_CONFIG_YAML
    config = yaml.safe_load(committed.read_text())
    assert config["platform"] == "onnx" and config["max_batch_size"] == 64
    assert config["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [64]}]
    assert config["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [10]}]
