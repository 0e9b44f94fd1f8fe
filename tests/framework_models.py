"""Small TorchScript, torch.export, AOTInductor, SavedModel, JAX and TFLite models built on the fly for the fault
tests.

Every model is made from constants or seeded weights, with nothing downloaded. Each
framework is imported inside the function that needs it, so importing this module is cheap.
TensorFlow never enters the test process: it bundles its own protobuf runtime, which crashes
grpc_tools' protoc there, so :func:`tensorflow_models` builds the SavedModels in a child
process (``python -m tests.framework_models REPO``), and :func:`tflite_models` converts the
TFLite models in one (``python -m tests.framework_models REPO tflite``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The iteration count the slow models are asked for: far more than a test ever waits for.
ENDLESS = 2**31 - 1

#: The message the failing models raise with.
REFUSAL = "negative input refused"


def _config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)


def _loop_weights() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((64, 64)) / 8).astype(np.float32)


# --- TorchScript and torch.export ----------------------------------------------------------------

_SLOW_TORCH_CONFIG = """platform: {platform}
max_batch_size: 0
inputs:
  - {{name: iterations, datatype: INT64, shape: [1]}}
  - {{name: x, datatype: FP32, shape: [64, 64]}}
outputs:
  - {{name: y, datatype: FP32, shape: [64, 64]}}
instances: {{count: 2}}
parameters: {{intra_op_threads: 1}}
"""

_FAILING_CONFIG = """platform: {platform}
max_batch_size: 8
inputs:
  - {{name: x, datatype: FP32, shape: [4]}}
outputs:
  - {{name: y, datatype: FP32, shape: [4]}}
{extra}"""


def _save_torchscript(module: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(path))


def slow_torchscript(repo: Path, name: str = "slow_torchscript") -> None:
    """``iterations`` turns of ``x = tanh(x @ w)``: holds a batch in flight as long as asked."""
    import torch

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(_loop_weights()), requires_grad=False)

        def forward(self, iterations: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            for _ in range(int(iterations[0])):
                x = torch.tanh(torch.matmul(x, self.w))
            return x

    _save_torchscript(Slow(), repo / name / "1" / "model.pt")
    _config(repo / name, _SLOW_TORCH_CONFIG.format(platform="torchscript"))


def failing_torchscript(repo: Path, name: str = "failing_torchscript", extra: str = "") -> None:
    """y = 2x, but raises for any negative element (a model that fails while executing)."""
    import torch

    class Failing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise RuntimeError("negative input refused")  # REFUSAL: TorchScript takes literals only
            return x * 2

    _save_torchscript(Failing(), repo / name / "1" / "model.pt")
    _config(repo / name, _FAILING_CONFIG.format(platform="torchscript", extra=extra))


def failing_torch_export(repo: Path, name: str = "failing_torch_export", extra: str = "") -> None:
    """y = 2x as a torch.export program whose runtime assertion fails for negative elements."""
    import torch

    class Failing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            negatives = (x < 0).sum().item()
            torch._check(negatives == 0, lambda: REFUSAL)  # type: ignore[no-untyped-call]
            return x * 2

    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(Failing(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})
    path = repo / name / "1" / "model.pt2"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    _config(repo / name, _FAILING_CONFIG.format(platform="torch_export", extra=extra))


def broken_torch_models(repo: Path) -> None:
    """Missing, corrupt and contradicting TorchScript and torch.export models."""
    for platform, file in (("torchscript", "model.pt"), ("torch_export", "model.pt2")):
        _config(repo / f"missing_{platform}", _FAILING_CONFIG.format(platform=platform, extra=""))
        (repo / f"missing_{platform}" / "1").mkdir()
        _config(repo / f"corrupt_{platform}", _FAILING_CONFIG.format(platform=platform, extra=""))
        (repo / f"corrupt_{platform}" / "1").mkdir()
        (repo / f"corrupt_{platform}" / "1" / file).write_bytes(b"PK\x03\x04 this is not a torch archive")
    # TorchScript: forward takes one input, the config lists two.
    failing_torchscript(repo, "contradicts_torchscript")
    (repo / "contradicts_torchscript" / "config.yaml").write_text(
        _FAILING_CONFIG.format(platform="torchscript", extra="").replace(
            "inputs:\n", "inputs:\n  - {name: mask, datatype: BOOL, shape: [4]}\n"))
    # torch.export: the program's input is FP32, the config says INT32.
    failing_torch_export(repo, "contradicts_torch_export")
    (repo / "contradicts_torch_export" / "config.yaml").write_text(
        _FAILING_CONFIG.format(platform="torch_export", extra="").replace("x, datatype: FP32", "x, datatype: INT32"))


# --- AOTInductor ---------------------------------------------------------------------------------

_AOTI_CONFIG = """platform: torch_aoti
max_batch_size: {max_batch}
inputs:
  - {{name: x, datatype: {datatype}, shape: [{width}]}}
outputs:
  - {{name: y, datatype: FP32, shape: [4]}}
{extra}"""


def compile_doubling_aoti(path: Path) -> None:
    """y = 2x for x of shape [batch, 4], batch 1..8 (compiled as 2..8), as an AOTInductor package for the CPU.

    The one compile the AOTInductor tests pay for (half a minute on two cores); the models of
    :func:`aoti_models` are copies of it and variations of its bytes.
    """
    import warnings

    import torch

    from tests.helpers import load_script

    class Doubling(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(Doubling(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})
    with warnings.catch_warnings():
        for message, category in load_script("build_model_repo").AOTI_COMPILE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def _aoti_model(repo: Path, name: str, data: bytes, max_batch: int = 8, datatype: str = "FP32", width: int = 4,
                extra: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.pt2").write_bytes(data)
    _config(repo / name, _AOTI_CONFIG.format(max_batch=max_batch, datatype=datatype, width=width, extra=extra))


def _recompiled_for(package: bytes, device: str) -> bytes:
    """The package with its metadata saying it was compiled for ``device`` (no CUDA compiler is needed)."""
    import io
    import json
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("_metadata.json"):
                data = json.dumps({**json.loads(data), "AOTI_DEVICE_KEY": device}).encode()
            target.writestr(info, data)
    return out.getvalue()


def aoti_models(repo: Path, package: Path) -> None:
    """doubling_aoti (the package as compiled) and the packages and configs that must not load."""
    data = package.read_bytes()
    _aoti_model(repo, "doubling_aoti", data)
    _aoti_model(repo, "small_range_aoti", data, max_batch=16)
    _aoti_model(repo, "contradicts_aoti", data, datatype="INT32")
    _aoti_model(repo, "wide_aoti", data, width=5)
    _aoti_model(repo, "two_outputs_aoti", data)
    config = repo / "two_outputs_aoti" / "config.yaml"
    config.write_text(config.read_text().replace("outputs:\n", "outputs:\n  - {name: z, datatype: FP32, shape: [4]}\n"))
    _aoti_model(repo, "cuda_package_aoti", _recompiled_for(data, "cuda"))
    _aoti_model(repo, "truncated_aoti", data[: len(data) // 2])
    _aoti_model(repo, "garbage_aoti", b"this is not a package at all")
    _aoti_model(repo, "gpu_aoti", data, extra=GPU)
    failing_torch_export(repo, "export_as_aoti")
    _config(repo / "export_as_aoti", _AOTI_CONFIG.format(max_batch=8, datatype="FP32", width=4, extra=""))


# --- TensorFlow SavedModel (built in a child process) ---------------------------------------------

def tensorflow_models(repo: Path, *what: str) -> None:
    """slow_savedmodel, failing_savedmodel, the broken SavedModels and gpu_savedmodel (or, with ``"tflite"``,
    the TFLite models), in a child process."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "tests.framework_models", str(repo), *what], cwd=root,
                         capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout + run.stderr


def tflite_models(repo: Path) -> None:
    """The TFLite models of tests/integration/test_tflite.py, converted in a child process."""
    tensorflow_models(repo, "tflite")


def tf_serving_models(repo: Path) -> None:
    """half_plus_three, string_lengths and half_plus_three_batched in TF Serving's layout (the last two with a
    config.yaml beside it), in a child process."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "tests.framework_models", str(repo), "tf_serving"], cwd=root,
                         capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout + run.stderr


def _save_tf(module: Any, function: Any, path: Path, signature: str = "serving_default") -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={signature: function})


def slow_savedmodel(repo: Path, name: str = "slow_savedmodel") -> None:
    """A tf.while_loop of ``iterations`` turns of ``x = tanh(x @ w)``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Slow(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(_loop_weights(), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([1], tf.int64, name="iterations"),  # type: ignore[untyped-decorator]
                                      tf.TensorSpec([64, 64], tf.float32, name="x")])
        def serve(self, iterations: Any, x: Any) -> dict[str, Any]:
            _, y = tf.while_loop(lambda i, _: i < iterations[0],
                                 lambda i, state: (i + 1, tf.tanh(tf.matmul(state, self.w))),
                                 (tf.constant(0, tf.int64), x))
            return {"y": y}

    module = Slow()
    _save_tf(module, module.serve, repo / name / "1" / "model.savedmodel")
    _config(repo / name, "platform: savedmodel\nmax_batch_size: 0\ninstances: {count: 2}\n")


def failing_savedmodel(repo: Path, name: str = "failing_savedmodel", extra: str = "") -> None:
    """y = 2x for x of shape [batch, 4]; a tf.debugging assertion fails for negative elements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Failing(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> dict[str, Any]:
            with tf.control_dependencies([tf.debugging.assert_non_negative(x, message=REFUSAL)]):
                return {"y": x * 2}

    module = Failing()
    _save_tf(module, module.serve, repo / name / "1" / "model.savedmodel")
    _config(repo / name, f"platform: savedmodel\nmax_batch_size: 8\n{extra}")


def broken_savedmodels(repo: Path) -> None:
    """Missing, corrupt and contradicting SavedModels."""
    _config(repo / "missing_savedmodel", "platform: savedmodel\nmax_batch_size: 8\n")
    (repo / "missing_savedmodel" / "1").mkdir()
    failing_savedmodel(repo, "corrupt_savedmodel")
    (repo / "corrupt_savedmodel" / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x08garbage\xff")
    failing_savedmodel(repo, "contradicts_savedmodel")
    (repo / "contradicts_savedmodel" / "config.yaml").write_text(
        "platform: savedmodel\nmax_batch_size: 8\ninputs: [{name: x, datatype: INT32, shape: [4]}]\n")


def half_plus_three(repo: Path, name: str = "half_plus_three", version: str = "00000123") -> None:
    """TF Serving's documented example model: y = 0.5x + 3 for x of shape [-1], as TF Serving lays it out:
    ``<name>/00000123/saved_model.pb`` (version 123) and ``variables/``, no config file."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class HalfPlusThree(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = tf.Variable(0.5), tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": self.a * x + self.b}

    module = HalfPlusThree()
    _save_tf(module, module.serve, repo / name / version)


def string_lengths(repo: Path, name: str = "string_lengths") -> None:
    """DT_STRING in, two outputs: each string's length in bytes, and the strings back as ``echo_bytes``; its
    signature is ``predict_strings`` (named in a config.yaml beside TF Serving's layout)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Lengths(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])  # type: ignore[untyped-decorator]
        def serve(self, text: Any) -> dict[str, Any]:
            return {"length": tf.strings.length(text), "echo_bytes": tf.identity(text)}

    module = Lengths()
    _save_tf(module, module.serve, repo / name / "1", "predict_strings")
    _config(repo / name, "platform: savedmodel\nparameters: {signature_name: predict_strings}\n")


# --- JAX -------------------------------------------------------------------------------------------

def _save_jax(function: Any, args: tuple[Any, ...], folder: Path) -> None:
    import jax
    from jax import export

    exported = export.export(jax.jit(function), platforms=("cpu", "cuda"))(*args)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.jax").write_bytes(exported.serialize())


def slow_jax(repo: Path, name: str = "slow_jax") -> None:
    """A fori_loop of ``iterations`` turns of ``x = tanh(x @ w)`` (the trip count is data, not shape)."""
    import jax
    import jax.numpy as jnp

    w = jnp.asarray(_loop_weights())

    def slow(inputs: dict[str, Any]) -> dict[str, Any]:
        turn = lambda _, state: jnp.tanh(state @ w)  # noqa: E731
        return {"y": jax.lax.fori_loop(0, inputs["iterations"][0], turn, inputs["x"])}

    _save_jax(slow, ({"iterations": jax.ShapeDtypeStruct((1,), jnp.int32),  # type: ignore[no-untyped-call]
                      "x": jax.ShapeDtypeStruct((64, 64), jnp.float32)},),  # type: ignore[no-untyped-call]
              repo / name / "1")
    _config(repo / name, "platform: jax\nmax_batch_size: 0\ninstances: {count: 2}\n")


def doubling_jax(repo: Path, name: str = "doubling_jax", extra: str = "") -> None:
    """y = 2x for x of shape [batch, 4], with a params.npz holding the 2."""
    import jax
    import jax.numpy as jnp
    from jax import export

    (batch,) = export.symbolic_shape("batch")
    _save_jax(lambda params, inputs: {"y": inputs["x"] * params["factor"]},
              ({"factor": jax.ShapeDtypeStruct((), jnp.float32)},  # type: ignore[no-untyped-call]
               {"x": jax.ShapeDtypeStruct((batch, 4), jnp.float32)}),  # type: ignore[no-untyped-call]
              repo / name / "1")
    np.savez(repo / name / "1" / "params.npz", factor=np.float32(2))
    _config(repo / name, f"platform: jax\nmax_batch_size: 8\n{extra}")


def dynamic_jax(repo: Path, name: str = "dynamic_jax") -> None:
    """y = 2x for x of any length, unbatched: each new length compiles once, while serving."""
    import jax
    import jax.numpy as jnp
    from jax import export

    (length,) = export.symbolic_shape("n")
    _save_jax(lambda inputs: {"y": inputs["x"] * 2},
              ({"x": jax.ShapeDtypeStruct((length,), jnp.float32)},),  # type: ignore[no-untyped-call]
              repo / name / "1")
    _config(repo / name, "platform: jax\nmax_batch_size: 0\n")


def broken_jax_models(repo: Path) -> None:
    """Missing, corrupt and contradicting JAX models, and one without its params.npz."""
    _config(repo / "missing_jax", "platform: jax\nmax_batch_size: 8\n")
    (repo / "missing_jax" / "1").mkdir()
    doubling_jax(repo, "corrupt_jax")
    (repo / "corrupt_jax" / "1" / "model.jax").write_bytes(b"not a flatbuffer at all")
    doubling_jax(repo, "contradicts_jax")
    (repo / "contradicts_jax" / "config.yaml").write_text(
        "platform: jax\nmax_batch_size: 8\ninputs: [{name: x, datatype: INT32, shape: [4]}]\n")
    doubling_jax(repo, "no_params_jax")
    (repo / "no_params_jax" / "1" / "params.npz").unlink()


GPU = "instances: {count: 1, device: 'cuda:0'}\n"


def gpu_models(repo: Path) -> None:
    """A torch and a JAX model configured for ``cuda:0`` (gpu_savedmodel comes with tensorflow_models)."""
    failing_torchscript(repo, "gpu_torchscript", GPU)
    failing_torch_export(repo, "gpu_torch_export", GPU)
    doubling_jax(repo, "gpu_jax", GPU)


# --- TFLite (converted by TensorFlow, in the child process) --------------------------------------

def _tflite_doubling(batch: int | None, int8: bool = False) -> bytes:
    """y = 2x for x of shape [batch, 4] (None: a dynamic batch), float32 or fully int8 (input and output)."""
    import tensorflow as tf

    class Doubling(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([batch, 4], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * 2}

    module = Doubling()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if int8:
        calibration = np.random.default_rng(0).uniform(-4, 4, (64, 1 if batch is None else batch, 4))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row.astype(np.float32)] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    data: bytes = converter.convert()
    return data


def _tflite_slow() -> bytes:
    """``iterations`` (INT32 [1]) turns of ``x = tanh(x @ w)`` for x FP32 [64, 64], unbatched: a TFLite WHILE loop."""
    import tensorflow as tf

    class Slow(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.constant(_loop_weights())

        @tf.function(input_signature=[tf.TensorSpec([1], tf.int32, name="iterations"),  # type: ignore[untyped-decorator]
                                      tf.TensorSpec([64, 64], tf.float32, name="x")])
        def serve(self, iterations: Any, x: Any) -> dict[str, Any]:
            _, y = tf.while_loop(lambda i, _: i < iterations[0],
                                 lambda i, state: (i + 1, tf.tanh(tf.matmul(state, self.w))),
                                 (tf.constant(0, tf.int32), x))
            return {"y": y}

    module = Slow()
    data: bytes = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()],
                                                                  module).convert()
    return data


def _tflite(repo: Path, name: str, data: bytes, config: str, max_batch_size: int = 8) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.tflite").write_bytes(data)
    _config(repo / name, f"platform: tflite\nmax_batch_size: {max_batch_size}\n{config}")


def _tflite_models_here(repo: Path) -> None:
    """doubling (two instances), fixed_batch (converted for batches of exactly 3), int8 (served as FP32 and raw),
    slow (unbatched; as many turns of work as asked), and the broken ones: missing, garbage, truncated,
    empty, contradicting their config, asking for a GPU."""
    doubling = _tflite_doubling(None)
    _tflite(repo, "doubling_tflite", doubling, "instances: {count: 2}\nparameters: {intra_op_threads: 1}\n")
    _tflite(repo, "fixed_batch_tflite", _tflite_doubling(3), "")
    _tflite(repo, "slow_tflite", _tflite_slow(), "", max_batch_size=0)
    int8 = _tflite_doubling(None, int8=True)
    _tflite(repo, "int8_tflite", int8, "")
    _tflite(repo, "raw_int8_tflite", int8, "parameters: {raw_quantized: true}\n")
    _config(repo / "missing_tflite", "platform: tflite\nmax_batch_size: 8\n")
    (repo / "missing_tflite" / "1").mkdir()
    _tflite(repo, "garbage_tflite", b"this is not a flatbuffer", "")
    _tflite(repo, "truncated_tflite", doubling[: len(doubling) // 2], "")
    _tflite(repo, "empty_tflite", b"", "")
    _tflite(repo, "contradicts_tflite", doubling, "inputs: [{name: x, datatype: INT32, shape: [4]}]\n")
    _tflite(repo, "gpu_tflite", doubling, GPU)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    if sys.argv[2:] == ["tf_serving"]:
        half_plus_three(target)
        string_lengths(target)
        # The same model with a config.yaml beside TF Serving's layout, to batch it.
        half_plus_three(target, "half_plus_three_batched", "1")
        _config(target / "half_plus_three_batched",
                "platform: savedmodel\nmax_batch_size: 8\ndynamic_batching: {max_queue_delay_ms: 1}\n")
        sys.exit(0)
    if sys.argv[2:] == ["tflite"]:
        _tflite_models_here(target)
        sys.exit(0)
    slow_savedmodel(target)
    failing_savedmodel(target)
    broken_savedmodels(target)
    failing_savedmodel(target, "gpu_savedmodel", GPU)

