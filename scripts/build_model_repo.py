"""Build the example model repository offline and reproducibly.

The served models are not committed (binary, regenerable); only each model's
``config.yaml`` is. This script trains the digits classifier once from data bundled
with scikit-learn (no network) and exports the very same float32 weights to seven
formats: ONNX, TorchScript, torch.export, an AOTInductor package, TensorFlow SavedModel, JAX
(``jax.export`` plus ``params.npz``) and LiteRT/TFLite, and once more as an int8-quantized TFLite
model. Two runs produce byte-identical files, wherever the checkout
lies, which lets tests and CI rebuild the repository instead of trusting a blob.

Usage: ``python scripts/build_model_repo.py [--repo model_repo] [--force] [--formats onnx,jax]``
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

TORCHSCRIPT_CONFIG_YAML = """\
# The digits classifier as TorchScript, with the weights of digits_onnx.
# TorchScript carries no tensor names or dtypes, so the config lists them.
platform: torchscript
max_batch_size: 64
inputs:
  - {name: input, datatype: FP32, shape: [64]}
outputs:
  - {name: logits, datatype: FP32, shape: [10]}
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

TORCH_EXPORT_CONFIG_YAML = """\
# The digits classifier as a torch.export program, with the weights of digits_onnx.
# The program names its input and knows every dtype and shape; its output is a bare
# tensor, so the config names it.
platform: torch_export
max_batch_size: 64
outputs:
  - {name: logits, datatype: FP32, shape: [10]}
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

TORCH_AOTI_CONFIG_YAML = """\
# The digits classifier compiled ahead of time by AOTInductor (CPU), with the weights of
# digits_onnx. The package knows its input's dtype, shape and batch range (2..64 compiled;
# a batch of one is padded) but no names, so the config lists the tensors.
platform: torch_aoti
max_batch_size: 64
inputs:
  - {name: input, datatype: FP32, shape: [64]}
outputs:
  - {name: logits, datatype: FP32, shape: [10]}
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

SAVEDMODEL_CONFIG_YAML = """\
# The digits classifier as a TensorFlow SavedModel, with the weights of digits_onnx.
# Inputs and outputs are read from the serving_default signature.
platform: savedmodel
max_batch_size: 64
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1, signature_name: serving_default}
"""

JAX_CONFIG_YAML = """\
# The digits classifier as a jax.export function and its params.npz, with the weights
# of digits_onnx. Inputs and outputs are read from the export. Batches are padded to
# buckets (powers of two up to max_batch_size), each compiled when the model loads.
platform: jax
max_batch_size: 64
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

TFLITE_CONFIG_YAML = """\
# The digits classifier as a LiteRT (TensorFlow Lite) flatbuffer, converted from the SavedModel's
# function with the weights of digits_onnx. Inputs and outputs are read from its signature.
platform: tflite
max_batch_size: 64
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

TFLITE_INT8_CONFIG_YAML = """\
# The digits classifier quantized to int8 (weights, activations, input and output), calibrated on
# the digits training split. Clients send and receive FP32: the server applies the input's and
# the output's scale and zero point (raw_quantized: true would serve the INT8 tensors instead).
platform: tflite
max_batch_size: 64
instances: {count: 1, device: cpu}
parameters: {intra_op_threads: 1}
"""

#: torch 2.13 deprecates the torch.jit entry points; writing TorchScript is what this script is for.
TORCHSCRIPT_DEPRECATIONS = (r"`torch\.jit\.script` is deprecated", r"`torch\.jit\.save` is deprecated")

#: Where the AOTInductor compiler works (its cache, emptied before each compile, and a lock): one fixed
#: folder, since the compiled library records its sources' paths.
AOTI_BUILD_DIR = Path(tempfile.gettempdir()) / "tensorgate-aoti-build"

#: What torch 2.13's AOTInductor compile warns about on the way: inductor touches torch.jit and
#: pytree's deprecated LeafSpec itself; neither concerns the package it writes.
AOTI_COMPILE_WARNINGS = ((r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
                         (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning))

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


#: A digits bundle read instead of scikit-learn (``use_digits_bundle``), or None.
_bundle: Path | None = None


def use_digits_bundle(path: Path | None) -> None:
    """Take the test split and the trained weights from ``path`` (written by ``save_digits_bundle``).

    For a machine without scikit-learn (the GPU machine): the models it builds from the bundle hold
    the very weights a build here trains, and score the same test split.
    """
    global _bundle
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no digits bundle (write one with --save-digits)")
    _bundle = None if path is None else Path(path)


def save_digits_bundle(path: Path, seed: int = 0) -> None:
    """Write the test split and the weights trained with ``seed`` to ``path`` (.npz, ~28 KB)."""
    model = train_digits_mlp(seed)
    x_test, y_test = digits_test_split()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_test=x_test, y_test=y_test, w1=model.w1, b1=model.b1, w2=model.w2, b2=model.b2,
                        seed=np.int64(seed))
    _write_atomic(Path(path), buffer.getvalue())


def _bundled(seed: int | None = None) -> dict[str, npt.NDArray[Any]]:
    assert _bundle is not None
    with np.load(_bundle) as arrays:
        found = {name: arrays[name] for name in arrays.files}
    if seed is not None and int(found["seed"]) != seed:
        raise ValueError(f"{_bundle} holds the weights of seed {int(found['seed'])}, not {seed}")
    return found


def _digits_split() -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """Return (X_train, X_test, y_train, y_test), scaled to [0, 1]; one split shared by training and tests."""
    if _bundle is not None:
        raise RuntimeError(f"the training split is not in the digits bundle {_bundle}: this step needs scikit-learn")
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
    if _bundle is not None:
        arrays = _bundled()
        return arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)
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
    if _bundle is not None:
        arrays = _bundled(seed)
        weights = {name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in ("w1", "b1", "w2", "b2")}
        untested = DigitsMLP(**weights, test_accuracy=float("nan"))
        x_test, y_test = digits_test_split()
        return DigitsMLP(**weights, test_accuracy=accuracy(untested, x_test, y_test))
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


def _torch_module(model: DigitsMLP) -> Any:
    """The MLP as a ``torch.nn.Module`` holding the float32 weights (laid out as in numpy), frozen."""
    import torch

    class DigitsTorch(torch.nn.Module):
        # The TorchScript type name, fixed so that it does not depend on how this script was imported.
        _jit_override_qualname = "__torch__.tensorgate.DigitsMLP"

        def __init__(self) -> None:
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.from_numpy(model.w1.copy()), requires_grad=False)
            self.b1 = torch.nn.Parameter(torch.from_numpy(model.b1.copy()), requires_grad=False)
            self.w2 = torch.nn.Parameter(torch.from_numpy(model.w2.copy()), requires_grad=False)
            self.b2 = torch.nn.Parameter(torch.from_numpy(model.b2.copy()), requires_grad=False)

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(torch.matmul(input, self.w1) + self.b1)
            return torch.matmul(hidden, self.w2) + self.b2

    return DigitsTorch().eval()


def digits_torchscript_bytes(model: DigitsMLP) -> bytes:
    """The MLP scripted to TorchScript, without the debug records (they name this script's path)."""
    import torch

    with warnings.catch_warnings():
        for message in TORCHSCRIPT_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        scripted = torch.jit.script(_torch_module(model))
        saved = io.BytesIO()
        torch.jit.save(scripted, saved)
    reader = torch._C.PyTorchFileReader(io.BytesIO(saved.getvalue()))
    stripped = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(stripped)
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":
            continue  # the writer adds its own serialization id, derived from the contents
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return stripped.getvalue()


def _digits_program(model: DigitsMLP, max_batch: int | None = None, device: str = "cpu") -> Any:
    """The MLP exported by ``torch.export`` with a dynamic batch dimension (up to ``max_batch``) on ``device``."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    module, example = _torch_module(model).to(device), torch.zeros(2, 64, device=device)
    program = torch.export.export(module, (example,), dynamic_shapes={"input": {0: batch}})
    for node in program.graph.nodes:  # source locations and module paths: they name this script
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "from_node"):
            node.meta.pop(key, None)
    return program


def digits_torch_export_bytes(model: DigitsMLP) -> bytes:
    """The MLP as a ``torch.export`` program with a dynamic batch dimension (``.pt2``)."""
    import torch

    program = _digits_program(model)
    saved = io.BytesIO()
    torch.export.save(program, saved)
    return saved.getvalue()


def export_torch_aoti(model: DigitsMLP, path: Path, device: str = "cpu") -> None:
    """Compile the MLP with AOTInductor for ``device`` into the package ``path`` (batch up to 64).

    The compiler runs in a child process (this script again, with ``--aoti-from``), whose
    inductor cache is one fixed folder, held under a lock: the compiled library records the
    paths of its generated sources, so only a fixed folder gives the same bytes twice. The
    cache is emptied first: a package built from cached parts differs from a fresh one.
    """
    _in_child(model, Path(path), "--aoti-from", ["--aoti-device", device],
              {"TORCHINDUCTOR_CACHE_DIR": str(AOTI_BUILD_DIR / "cache")})


def _write_torch_aoti_here(weights: dict[str, FloatArray], path: Path, device: str) -> None:
    """The compiling half of :func:`export_torch_aoti`, run in its own process."""
    import fcntl

    import torch

    model = DigitsMLP(weights["w1"], weights["b1"], weights["w2"], weights["b2"], float("nan"))
    AOTI_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(AOTI_BUILD_DIR / "lock", "w") as lock, warnings.catch_warnings():
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compile at a time in the shared cache folder
        shutil.rmtree(AOTI_BUILD_DIR / "cache", ignore_errors=True)
        for message, category in AOTI_COMPILE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        program = _digits_program(model, max_batch=64, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def export_savedmodel(model: DigitsMLP, path: Path) -> None:
    """Write the MLP as a SavedModel folder at ``path`` with a ``serving_default`` signature
    ``{"input": [batch, 64] float32} -> {"logits": [batch, 10] float32}``.

    TensorFlow runs in a child process (this script again, with ``--savedmodel-from``): it
    bundles its own protobuf runtime, which crashes grpc_tools' protoc if both live in one
    process (a test process builds this repository and regenerates the gRPC code), and it
    numbers its functions per process, so only a fresh process writes the same bytes twice.
    """
    _in_child(model, Path(path), "--savedmodel-from", [], {"TF_CPP_MIN_LOG_LEVEL": "2"})


def _in_child(model: DigitsMLP, path: Path, flag: str, options: list[str], env: dict[str, str]) -> None:
    """Run this script again (``flag`` WEIGHTS ``--repo`` OUT ``options``) to write ``path``, then move it there.

    The child writes beside ``path`` and the result is renamed into place, so an interrupted
    build never leaves a half-written model.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        weights = staging / "weights.npz"
        weights.write_bytes(_npz_bytes({"w1": model.w1, "b1": model.b1, "w2": model.w2, "b2": model.b2}))
        out = staging / path.name
        run = subprocess.run([sys.executable, str(Path(__file__).resolve()), flag, str(weights), "--repo", str(out),
                              *options], capture_output=True, text=True, check=False, env={**os.environ, **env})
        if run.returncode != 0:
            raise RuntimeError(f"writing {path} failed:\n{run.stdout}{run.stderr}")
        for item in [out, *out.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(out, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _digits_tf_module(weights: dict[str, FloatArray]) -> Any:
    """The MLP as a ``tf.Module`` whose ``serve`` maps ``{"input": [batch, 64]}`` to ``{"logits": [batch, 10]}``."""
    import tensorflow as tf

    class DigitsTF(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name="digits_mlp")
            self.w1 = tf.Variable(weights["w1"], name="w1", trainable=False)
            self.b1 = tf.Variable(weights["b1"], name="b1", trainable=False)
            self.w2 = tf.Variable(weights["w2"], name="w2", trainable=False)
            self.b2 = tf.Variable(weights["b2"], name="b2", trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="input")])  # type: ignore[untyped-decorator]
        def serve(self, input: Any) -> dict[str, Any]:
            hidden = tf.nn.relu(tf.matmul(input, self.w1) + self.b1)
            return {"logits": tf.matmul(hidden, self.w2) + self.b2}

    return DigitsTF()


def _write_savedmodel_here(weights: dict[str, FloatArray], path: Path) -> None:
    """The TensorFlow half of :func:`export_savedmodel`, run in its own process."""
    import tensorflow as tf
    from tensorflow.core.protobuf import fingerprint_pb2

    module = _digits_tf_module(weights)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    # The fingerprint holds a random UUID; derive it from the saved graph so that builds agree.
    fingerprint_file = path / "fingerprint.pb"
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(fingerprint_file.read_bytes())
    digest = hashlib.sha256((path / "saved_model.pb").read_bytes()).digest()
    fingerprint.uuid = str(uuid.UUID(bytes=digest[:16]).int)
    fingerprint_file.write_bytes(fingerprint.SerializeToString(deterministic=True))


@functools.cache
def digits_tflite_bytes(model: DigitsMLP) -> tuple[bytes, bytes]:
    """The MLP as two LiteRT flatbuffers with a ``serving_default`` signature like the SavedModel's: float32,
    and full-integer int8 (int8 input and output too) calibrated on the digits training split.

    Converted by TensorFlow in a child process (this script again, with ``--tflite-from``), for the
    reasons given at :func:`export_savedmodel`; one child writes both, so it is cached per model.
    """
    with tempfile.TemporaryDirectory(prefix="tflite.") as folder:
        staging = Path(folder)
        arrays = {"w1": model.w1, "b1": model.b1, "w2": model.w2, "b2": model.b2, "calibration": _digits_split()[0]}
        (staging / "weights.npz").write_bytes(_npz_bytes(arrays))
        run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--tflite-from", str(staging /
                              "weights.npz"), "--repo", str(staging)], capture_output=True, text=True, check=False,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if run.returncode != 0:
            raise RuntimeError(f"converting to TFLite failed:\n{run.stdout}{run.stderr}")
        return (staging / "float.tflite").read_bytes(), (staging / "int8.tflite").read_bytes()


def _write_tflite_here(arrays: dict[str, FloatArray], folder: Path) -> None:
    """The TensorFlow half of :func:`digits_tflite_bytes`: ``float.tflite`` and ``int8.tflite`` in ``folder``."""
    import tensorflow as tf

    module = _digits_tf_module(arrays)
    function = module.serve.get_concrete_function()
    (folder / "float.tflite").write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([function], module).convert())
    calibration = arrays["calibration"]

    def representative() -> Any:
        for row in range(len(calibration)):
            yield [calibration[row : row + 1]]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # The calibration gives the input's range, which is what the converter says is missing.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        (folder / "int8.tflite").write_bytes(converter.convert())


def digits_jax_bytes(model: DigitsMLP) -> tuple[bytes, bytes]:
    """The MLP as ``jax.export`` bytes of ``f(params, {"input": x}) -> {"logits": y}`` (symbolic batch,
    lowered for CPU and CUDA, full-precision matmuls) and the ``params.npz`` that goes beside it."""
    import jax
    import jax.numpy as jnp
    from jax import export

    def forward(params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        highest = jax.lax.Precision.HIGHEST
        hidden = jnp.maximum(jnp.matmul(inputs["input"], params["w1"], precision=highest) + params["b1"], 0.0)
        return {"logits": jnp.matmul(hidden, params["w2"], precision=highest) + params["b2"]}

    params = {"w1": model.w1, "b1": model.b1, "w2": model.w2, "b2": model.b2}
    (batch,) = export.symbolic_shape("batch")
    params_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()}  # type: ignore[no-untyped-call]
    inputs_spec = {"input": jax.ShapeDtypeStruct((batch, 64), jnp.float32)}  # type: ignore[no-untyped-call]
    limit = getattr(jax.config, "jax_traceback_in_locations_limit")  # noqa: B009 - untyped option
    jax.config.update("jax_traceback_in_locations_limit", 0)  # type: ignore[no-untyped-call]  # no source paths
    try:
        exported = export.export(jax.jit(forward), platforms=("cpu", "cuda"))(params_spec, inputs_spec)
        data = bytes(exported.serialize())
    finally:
        jax.config.update("jax_traceback_in_locations_limit", limit)  # type: ignore[no-untyped-call]
    return data, _npz_bytes(params)


def _npz_bytes(arrays: dict[str, FloatArray]) -> bytes:
    """An ``.npz`` (what ``np.savez`` writes) with fixed timestamps, so that its bytes depend only on the arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


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


@dataclass(frozen=True)
class ExampleModel:
    """One example model: its folder, config, the artefact whose presence means "built", and its writer."""

    name: str
    config: str
    artefact: str
    write: Callable[[DigitsMLP, Path], None]


def _write_onnx(model: DigitsMLP, version_dir: Path) -> None:
    export_onnx(model, version_dir / "model.onnx")


def _write_torchscript(model: DigitsMLP, version_dir: Path) -> None:
    _write_atomic(version_dir / "model.pt", digits_torchscript_bytes(model))


def _write_torch_export(model: DigitsMLP, version_dir: Path) -> None:
    _write_atomic(version_dir / "model.pt2", digits_torch_export_bytes(model))


def _write_torch_aoti(model: DigitsMLP, version_dir: Path) -> None:
    export_torch_aoti(model, version_dir / "model.pt2")


def _write_savedmodel(model: DigitsMLP, version_dir: Path) -> None:
    export_savedmodel(model, version_dir / "model.savedmodel")


def _write_tflite(model: DigitsMLP, version_dir: Path) -> None:
    _write_atomic(version_dir / "model.tflite", digits_tflite_bytes(model)[0])


def _write_tflite_int8(model: DigitsMLP, version_dir: Path) -> None:
    _write_atomic(version_dir / "model.tflite", digits_tflite_bytes(model)[1])


def _write_jax(model: DigitsMLP, version_dir: Path) -> None:
    function, params = digits_jax_bytes(model)
    _write_atomic(version_dir / "params.npz", params)
    _write_atomic(version_dir / "model.jax", function)  # last: its presence means "built"


#: The example repository, by format name.
EXAMPLES: dict[str, ExampleModel] = {
    "onnx": ExampleModel(DIGITS_MODEL_NAME, DIGITS_CONFIG_YAML, "model.onnx", _write_onnx),
    "torchscript": ExampleModel("digits_torchscript", TORCHSCRIPT_CONFIG_YAML, "model.pt", _write_torchscript),
    "torch_export": ExampleModel("digits_torch_export", TORCH_EXPORT_CONFIG_YAML, "model.pt2", _write_torch_export),
    "torch_aoti": ExampleModel("digits_torch_aoti", TORCH_AOTI_CONFIG_YAML, "model.pt2", _write_torch_aoti),
    "savedmodel": ExampleModel("digits_savedmodel", SAVEDMODEL_CONFIG_YAML, "model.savedmodel", _write_savedmodel),
    "jax": ExampleModel("digits_jax", JAX_CONFIG_YAML, "model.jax", _write_jax),
    "tflite": ExampleModel("digits_tflite", TFLITE_CONFIG_YAML, "model.tflite", _write_tflite),
    "tflite_int8": ExampleModel("digits_tflite_int8", TFLITE_INT8_CONFIG_YAML, "model.tflite", _write_tflite_int8),
}


def build_repo(repo: Path, force: bool = False, seed: int = 0,
               formats: Sequence[str] = tuple(EXAMPLES)) -> list[Path]:
    """Build the missing artefacts of ``repo`` (all of them if ``force``); return what was written.

    An existing ``config.yaml`` is never overwritten: it is the committed, hand-edited source of truth.
    Training only happens when a model file actually has to be written, so a no-op run is fast; it
    happens once for all formats, so every format holds the same weights.
    """
    unknown = sorted(set(formats) - set(EXAMPLES))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {sorted(EXAMPLES)}")
    written: list[Path] = []
    model: DigitsMLP | None = None
    for fmt in formats:
        example = EXAMPLES[fmt]
        model_dir = Path(repo) / example.name
        config = model_dir / "config.yaml"
        if not config.exists():
            _write_atomic(config, example.config.encode("utf-8"))
            print(f"wrote {config}")
            written.append(config)
        version_dir = model_dir / str(DIGITS_VERSION)
        artefact = version_dir / example.artefact
        if force or not artefact.exists():
            model = model or train_digits_mlp(seed)
            example.write(model, version_dir)
            print(f"wrote {artefact} (test accuracy {model.test_accuracy:.4f})")
            written.append(artefact)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help="model repository root (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild model files even if they exist")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--formats", default=",".join(EXAMPLES),
                        help="comma-separated formats to build (default: %(default)s)")
    parser.add_argument("--digits", type=Path, metavar="BUNDLE",
                        help="take the digits test split and weights from BUNDLE instead of scikit-learn")
    parser.add_argument("--save-digits", type=Path, metavar="BUNDLE",
                        help="write the test split and the weights of --seed to BUNDLE (.npz) and stop")
    parser.add_argument("--savedmodel-from", type=Path, help=argparse.SUPPRESS)  # export_savedmodel's child
    parser.add_argument("--aoti-from", type=Path, help=argparse.SUPPRESS)  # export_torch_aoti's child
    parser.add_argument("--aoti-device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--tflite-from", type=Path, help=argparse.SUPPRESS)  # digits_tflite_bytes' child
    args = parser.parse_args(argv)
    if args.aoti_from is not None:
        with np.load(args.aoti_from) as weights:
            _write_torch_aoti_here({k: weights[k] for k in weights.files}, args.repo, args.aoti_device)
        return 0
    if args.savedmodel_from is not None:
        with np.load(args.savedmodel_from) as weights:
            _write_savedmodel_here({k: weights[k] for k in weights.files}, args.repo)
        return 0
    if args.tflite_from is not None:
        with np.load(args.tflite_from) as arrays:
            _write_tflite_here({k: arrays[k] for k in arrays.files}, args.repo)
        return 0
    if args.save_digits is not None:
        save_digits_bundle(args.save_digits, args.seed)
        print(f"wrote {args.save_digits}")
        return 0
    if args.digits is not None and not args.digits.is_file():
        parser.error(f"--digits {args.digits}: no digits bundle (write one with --save-digits)")
    use_digits_bundle(args.digits)
    written = build_repo(args.repo, force=args.force, seed=args.seed, formats=args.formats.split(","))
    if not written:
        print(f"{args.repo}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
