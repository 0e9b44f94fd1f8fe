"""The runtime adapters in-process, without a server: buckets, input binding, output mapping, CPU fallbacks.

torch, JAX and LiteRT are imported here (they coexist with the test process); TensorFlow is not
(see tests/framework_models.py), so the SavedModel adapter is tested through the servers only.
"""

from __future__ import annotations

import re
import shutil
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gateway.contract import LoadModel
from runtimes.base import InvalidInput, ModelLoadError, batch_buckets, bucket_for, pad_rows
from tests.helpers import MACHINE_SKIP, load_script


def test_buckets_are_powers_of_two_or_the_preferred_sizes_and_always_reach_the_maximum() -> None:
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(1) == (1,)
    assert batch_buckets(0) == ()
    assert batch_buckets(64, [24, 8, 100]) == (8, 24, 64)
    assert bucket_for(1, (8, 24, 64)) == 8 and bucket_for(9, (8, 24, 64)) == 24 and bucket_for(64, (8, 24, 64)) == 64


def test_padding_appends_zero_rows_and_keeps_the_dtype() -> None:
    x = np.arange(6, dtype=np.int16).reshape(3, 2)
    padded = pad_rows(x, 5)
    assert padded.dtype == np.int16 and padded.shape == (5, 2)
    assert np.array_equal(padded[:3], x) and not padded[3:].any()
    assert pad_rows(x, 3) is x


def _spec(path: Path, platform: str, **kwargs: object) -> LoadModel:
    fields: dict[str, object] = {"key": "m:1", "model_name": "m", "path": str(path), "platform": platform,
                                 "max_batch_size": 64, "device": "cpu", "instances": 1,
                                 "parameters": {"intra_op_threads": 1}, **kwargs}
    return LoadModel(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def build() -> types.ModuleType:
    return load_script("build_model_repo")


@pytest.fixture(scope="module")
def digits(build: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The example models in torch, JAX and TFLite formats, the digits test inputs and the numpy reference logits."""
    repo = tmp_path_factory.mktemp("adapters")
    build.build_repo(repo, formats=["torchscript", "torch_export", "jax", "tflite", "tflite_int8"])
    x, _ = build.digits_test_split()
    return repo, x, build.numpy_forward(build.train_digits_mlp(), x)


def test_jax_pads_to_the_preferred_sizes_and_compiles_only_at_load(
    digits: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    from runtimes.jax import JaxAdapter

    repo, x, reference = digits
    adapter = JaxAdapter(_spec(repo / "digits_jax" / "1", "jax", preferred_batch_sizes=(24, 3)))
    assert adapter.buckets == (3, 24, 64)
    assert adapter.warmup_compiles == 3
    for rows in (1, 2, 3, 4, 23, 24, 25, 63, 64):
        logits = adapter.execute({"input": x[:rows]}, ["logits"])["logits"]
        assert logits.shape == (rows, 10)
        np.testing.assert_allclose(logits, reference[:rows], rtol=0, atol=1e-5)
    assert adapter.serving_compiles == 0
    signature = adapter.signature()
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("input", "FP32", (-1, 64))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [("logits", "FP32", (-1, 10))]


@pytest.mark.parametrize(("platform", "folder"), [("torchscript", "digits_torchscript"),
                                                  ("torch_export", "digits_torch_export")])
def test_torch_adapters_match_the_reference(digits: tuple[Path, np.ndarray, np.ndarray], platform: str,
                                            folder: str) -> None:
    from runtimes.torch_export import TorchExportAdapter
    from runtimes.torchscript import TorchScriptAdapter

    repo, x, reference = digits
    cls = TorchScriptAdapter if platform == "torchscript" else TorchExportAdapter
    adapter = cls(_spec(repo / folder / "1", platform, inputs=[("input", "FP32")], outputs=[("logits", "FP32")]))
    read_only = x.copy()
    read_only.flags.writeable = False  # as arrays over a request's bytes can be
    logits = adapter.execute({"input": read_only}, ["logits"])["logits"]
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5)


def test_torch_on_the_cpu_gathers_with_numpy_and_passes_a_lone_request_as_it_is(
    digits: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    from runtimes.torchscript import TorchScriptAdapter

    repo, x, _ = digits
    adapter = TorchScriptAdapter(_spec(repo / "digits_torchscript" / "1", "torchscript", inputs=[("input", "FP32")],
                                       outputs=[("logits", "FP32")]))
    lone = {"input": x[:3]}
    assert adapter.gather([lone])["input"] is lone["input"]  # no copy: torch reads the arena's bytes
    assert np.array_equal(adapter.gather([{"input": x[:2]}, {"input": x[2:5]}])["input"], x[:5])


def test_torchscript_binds_inputs_by_name_or_position_and_maps_outputs(tmp_path: Path) -> None:
    import torch

    from runtimes.torchscript import TorchScriptAdapter

    class Pair(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a - b, (a * b).to(torch.bfloat16)

    path = tmp_path / "1" / "model.pt"
    path.parent.mkdir()
    torch.jit.save(torch.jit.script(Pair()), str(path))
    a = np.array([[5.0, 6.0]], np.float32)
    b = np.array([[1.0, 2.0]], np.float32)
    outputs = [("difference", "FP32"), ("product", "BF16")]
    by_name = TorchScriptAdapter(_spec(path.parent, "torchscript", inputs=[("b", "FP32"), ("a", "FP32")],
                                       outputs=outputs))
    result = by_name.execute({"a": a, "b": b}, ["difference", "product"])
    assert result["difference"].tolist() == [[4.0, 4.0]]
    assert result["product"].dtype == ml_dtypes.bfloat16 and result["product"].astype(np.float32).tolist() == [[5, 12]]
    positional = TorchScriptAdapter(_spec(path.parent, "torchscript", inputs=[("x", "FP32"), ("y", "FP32")],
                                          outputs=outputs))
    assert positional.execute({"x": a, "y": b}, ["difference"])["difference"].tolist() == [[4.0, 4.0]]
    wrong_type = TorchScriptAdapter(_spec(path.parent, "torchscript", inputs=[("a", "FP32"), ("b", "FP32")],
                                          outputs=[("difference", "FP32"), ("product", "FP32")]))
    with pytest.raises(RuntimeError, match="output 'product' is BF16 but the config says FP32"):
        wrong_type.execute({"a": a, "b": b}, ["product"])
    with pytest.raises(ModelLoadError, match="takes 2 input"):
        TorchScriptAdapter(_spec(path.parent, "torchscript", inputs=[("a", "FP32")], outputs=outputs))
    with pytest.raises(ModelLoadError, match="the config must list the inputs"):
        TorchScriptAdapter(_spec(path.parent, "torchscript"))


def test_tflite_resizes_the_batch_and_checks_each_input(digits: tuple[Path, np.ndarray, np.ndarray]) -> None:
    from runtimes.tflite import TFLiteAdapter

    repo, x, reference = digits
    adapter = TFLiteAdapter(_spec(repo / "digits_tflite" / "1", "tflite", instances=2))
    read_only = x.copy()
    read_only.flags.writeable = False  # as arrays over a request's bytes can be
    for rows in (64, 1, 7, 64, 2):
        logits = adapter.execute({"input": read_only[:rows]}, ["logits"])["logits"]
        np.testing.assert_allclose(logits, reference[:rows], rtol=0, atol=1e-5)
    with pytest.raises(InvalidInput, match=re.escape("input 'input': shape [2, 32] does not fit the model's [-1, 64]")):
        adapter.execute({"input": x[:2, :32]}, ["logits"])
    with pytest.raises(InvalidInput, match="input 'input': int32 does not fit the model's FP32"):
        adapter.execute({"input": x[:2].astype(np.int32)}, ["logits"])
    with pytest.raises(InvalidInput, match="no output 'probabilities'"):
        adapter.execute({"input": x[:2]}, ["probabilities"])
    with pytest.raises(ModelLoadError, match="no signature 'predict'"):
        TFLiteAdapter(_spec(repo / "digits_tflite" / "1", "tflite", parameters={"signature_name": "predict"}))
    with pytest.raises(ModelLoadError, match=re.escape("parameters.raw_quantized is 'yes', not true or false")):
        TFLiteAdapter(_spec(repo / "digits_tflite" / "1", "tflite", parameters={"raw_quantized": "yes"}))


def test_tflite_int8_quantizes_as_tflite_does(digits: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """Inputs round half away from zero and saturate; raw_quantized serves the integers; the result is
    the float model's within two steps of the output's quantization (measured: 1.15)."""
    from runtimes.tflite import TFLiteAdapter

    repo, x, reference = digits
    adapter = TFLiteAdapter(_spec(repo / "digits_tflite_int8" / "1", "tflite"))
    raw = TFLiteAdapter(_spec(repo / "digits_tflite_int8" / "1", "tflite", parameters={"raw_quantized": "true"}))
    assert [t.datatype for t in raw.signature().inputs + raw.signature().outputs] == ["INT8", "INT8"]
    (tensor, _), output = adapter._inputs["input"], adapter._outputs["logits"]
    assert tensor.quantization is not None and output.quantization is not None
    scale, zero = tensor.quantization
    steps = np.array([-300.5, -2.5, -0.5, 0.5, 1.5, 2.5, 300.5], np.float32)
    assert tensor.quantize(steps * np.float32(scale)).tolist() == [
        max(-128, min(127, int(v) + zero)) for v in (-301, -3, -1, 1, 2, 3, 301)]
    logits = adapter.execute({"input": x}, ["logits"])["logits"]
    integers = raw.execute({"input": tensor.quantize(x)}, ["logits"])["logits"]
    assert integers.dtype == np.int8 and np.array_equal(output.dequantize(integers), logits)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=2 * output.quantization[0])


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason=MACHINE_SKIP)
def test_asking_for_a_missing_gpu_is_a_load_error(digits: tuple[Path, np.ndarray, np.ndarray]) -> None:
    from runtimes.jax import JaxAdapter
    from runtimes.torchscript import TorchScriptAdapter

    repo, _, _ = digits
    with pytest.raises(ModelLoadError, match="device cuda:0 requested, but torch"):
        TorchScriptAdapter(_spec(repo / "digits_torchscript" / "1", "torchscript", device="cuda:0",
                                 inputs=[("input", "FP32")], outputs=[("logits", "FP32")]))
    with pytest.raises(ModelLoadError, match="device cuda:0 requested, but this jaxlib has no CUDA backend"):
        JaxAdapter(_spec(repo / "digits_jax" / "1", "jax", device="cuda:0"))


@pytest.mark.parametrize(("platform", "folder", "file"), [("torchscript", "digits_torchscript", "model.pt"),
                                                          ("torch_export", "digits_torch_export", "model.pt2"),
                                                          ("jax", "digits_jax", "model.jax"),
                                                          ("tflite", "digits_tflite", "model.tflite")])
def test_adapters_read_default_model_filename(digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path,
                                              platform: str, folder: str, file: str) -> None:
    """LoadModel.filename (a config's default_model_filename) replaces the format's default file name."""
    from runtimes.base import RuntimeAdapter
    from runtimes.jax import JaxAdapter
    from runtimes.tflite import TFLiteAdapter
    from runtimes.torch_export import TorchExportAdapter
    from runtimes.torchscript import TorchScriptAdapter

    classes: dict[str, type[RuntimeAdapter]] = {"torchscript": TorchScriptAdapter, "torch_export": TorchExportAdapter,
                                                "jax": JaxAdapter, "tflite": TFLiteAdapter}
    repo, x, reference = digits
    version = tmp_path / "1"
    shutil.copytree(repo / folder / "1", version)
    renamed = f"digits{Path(file).suffix}"
    (version / file).rename(version / renamed)
    tensors: dict[str, object] = {"preferred_batch_sizes": (64,)} if platform in ("jax", "tflite") else \
        {"inputs": [("input", "FP32")], "outputs": [("logits", "FP32")]}
    cls = classes[platform]
    with pytest.raises(ModelLoadError, match=re.escape(f"{version / file}: model file not found")):
        cls(_spec(version, platform, **tensors))
    adapter = cls(_spec(version, platform, filename=renamed, **tensors))
    np.testing.assert_allclose(adapter.execute({"input": x}, ["logits"])["logits"], reference, rtol=0, atol=1e-5)


def test_onnx_reads_default_model_filename(tmp_path: Path) -> None:
    from runtimes.onnx import OnnxRuntimeAdapter
    from tests.model_factory import flat_identity_model

    flat_identity_model(tmp_path, "m")
    version = tmp_path / "m" / "1"
    (version / "model.onnx").rename(version / "identity.onnx")
    with pytest.raises(ModelLoadError, match=re.escape(f"{version / 'model.onnx'}: model file not found")):
        OnnxRuntimeAdapter(_spec(version, "onnx", max_batch_size=0))
    adapter = OnnxRuntimeAdapter(_spec(version, "onnx", max_batch_size=0, filename="identity.onnx"))
    x = np.arange(5, dtype=np.float32)
    assert adapter.execute({"x": x}, ["y"])["y"].tolist() == x.tolist()
