"""Build the example model repository offline and reproducibly.

The served models are not committed (binary, regenerable); only each model's
``config.yaml`` is. This script trains them from data bundled with scikit-learn
(no network) and exports them so that two runs produce byte-identical files,
which lets tests and CI rebuild the repository instead of trusting a blob.

Usage: ``python scripts/build_model_repo.py [--repo model_repo] [--force]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEFAULT_REPO = Path(__file__).resolve().parent.parent / "model_repo"
DIGITS_MODEL_NAME = "digits_onnx"
DIGITS_VERSION = 1
ONNX_OPSET = 17
# Pinned rather than taken from onnx.IR_VERSION so that upgrading the onnx
# package does not change the exported bytes. IR 8 is what opset 17 shipped with.
ONNX_IR_VERSION = 8
# Enough head-room over the ~400 epochs seed 0 needs for the adam loss plateau
# (tol) to end training, so no ConvergenceWarning is raised.
MLP_MAX_ITER = 2000

DIGITS_CONFIG_YAML = """\
# The digits classifier (8x8 images from scikit-learn, flattened to 64 floats in [0, 1]).
platform: onnx
max_batch_size: 64
inputs:
  - {name: input, datatype: FP32, shape: [64]}
outputs:
  - {name: logits, datatype: FP32, shape: [10]}
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class DigitsMLP:
    """Weights of the 64 -> 32 (ReLU) -> 10 digits classifier, as float32 like the served model.

    ``eq=False`` because element-wise ``==`` on arrays makes dataclass equality meaningless.
    """

    w1: FloatArray  # (64, 32)
    b1: FloatArray  # (32,)
    w2: FloatArray  # (32, 10)
    b2: FloatArray  # (10,)
    test_accuracy: float


def _digits_split() -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """Return (X_train, X_test, y_train, y_test), scaled to [0, 1]; one split shared by training and tests."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    # Pixels are integers 0..16; dividing by 16 gives the [0, 1] range the config documents.
    return (
        (np.asarray(x_train) / 16.0).astype(np.float32),
        (np.asarray(x_test) / 16.0).astype(np.float32),
        np.asarray(y_train).astype(np.int64),
        np.asarray(y_test).astype(np.int64),
    )


def digits_test_split() -> tuple[FloatArray, IntArray]:
    """Return the held-out (X_test [N, 64] float32, y_test int64) so end-to-end tests can score a server."""
    _, x_test, _, y_test = _digits_split()
    return x_test, y_test


def numpy_forward(model: DigitsMLP, x: npt.ArrayLike) -> FloatArray:
    """Compute the logits in numpy: the reference any runtime serving the export must match."""
    xf = np.asarray(x, dtype=np.float32)
    hidden = np.maximum(xf @ model.w1 + model.b1, np.float32(0.0))
    logits: FloatArray = (hidden @ model.w2 + model.b2).astype(np.float32, copy=False)
    return logits


def accuracy(model: DigitsMLP, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Fraction of rows whose arg-max logit is the label."""
    predicted = np.argmax(numpy_forward(model, x), axis=1)
    return float(np.mean(predicted == np.asarray(y)))


def train_digits_mlp(seed: int = 0) -> DigitsMLP:
    """Train the digits MLP deterministically (fixed split and seed) and keep its weights as float32.

    The accuracy is measured with the float32 weights, i.e. what the exported model will score.
    """
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = _digits_split()
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="relu", random_state=seed, max_iter=MLP_MAX_ITER)
    clf.fit(x_train, y_train)
    # Column j of the logits must mean digit j; true because the classes are 0..9 sorted.
    if list(clf.classes_) != list(range(10)):
        raise RuntimeError(f"unexpected classes {clf.classes_!r}")
    w1, w2 = (np.ascontiguousarray(w, dtype=np.float32) for w in clf.coefs_)
    b1, b2 = (np.ascontiguousarray(b, dtype=np.float32) for b in clf.intercepts_)
    untested = DigitsMLP(w1=w1, b1=b1, w2=w2, b2=b2, test_accuracy=float("nan"))
    return DigitsMLP(w1=w1, b1=b1, w2=w2, b2=b2, test_accuracy=accuracy(untested, x_test, y_test))


def digits_onnx_bytes(model: DigitsMLP) -> bytes:
    """Serialise the MLP as an ONNX graph built by hand, so its bytes depend only on the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        numpy_helper.from_array(model.w1, "w1"),
        numpy_helper.from_array(model.b1, "b1"),
        numpy_helper.from_array(model.w2, "w2"),
        numpy_helper.from_array(model.b2, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h_matmul"], name="fc1_matmul"),
        helper.make_node("Add", ["h_matmul", "b1"], ["h_add"], name="fc1_add"),
        helper.make_node("Relu", ["h_add"], ["h_relu"], name="relu"),
        helper.make_node("MatMul", ["h_relu", "w2"], ["l_matmul"], name="fc2_matmul"),
        helper.make_node("Add", ["l_matmul", "b2"], ["logits"], name="fc2_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    proto = helper.make_model(
        graph,
        producer_name="tensorgate",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(proto, full_check=True)
    data: bytes = proto.SerializeToString(deterministic=True)
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so an interrupted build never leaves a truncated model
    that the next run would take for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            # mkstemp creates 0600; make it readable like a normal file (e.g. by a server in a container).
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(model: DigitsMLP, path: Path) -> None:
    """Write the model as ONNX to ``path`` (byte-for-byte reproducible)."""
    _write_atomic(Path(path), digits_onnx_bytes(model))


def build_repo(repo: Path, force: bool = False, seed: int = 0) -> list[Path]:
    """Build the missing artefacts of ``repo`` (all version folders if ``force``); return what was written.

    An existing ``config.yaml`` is never overwritten: it is the committed, hand-edited source of truth.
    Training only happens when a model file actually has to be written, so a no-op run is fast.
    """
    written: list[Path] = []
    model_dir = Path(repo) / DIGITS_MODEL_NAME
    config = model_dir / "config.yaml"
    if not config.exists():
        _write_atomic(config, DIGITS_CONFIG_YAML.encode("utf-8"))
        print(f"wrote {config}")
        written.append(config)
    onnx_path = model_dir / str(DIGITS_VERSION) / "model.onnx"
    if force or not onnx_path.exists():
        model = train_digits_mlp(seed)
        export_onnx(model, onnx_path)
        print(f"wrote {onnx_path} (test accuracy {model.test_accuracy:.4f})")
        written.append(onnx_path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help="model repository root (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild model files even if they exist")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    args = parser.parse_args(argv)
    written = build_repo(args.repo, force=args.force, seed=args.seed)
    if not written:
        print(f"{args.repo}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
