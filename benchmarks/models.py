"""The benchmark models, built from seeded weights in ONNX, TorchScript, torch.export and AOTInductor.

- ``mlp_small``: 784 -> 2048 -> 2048 -> 10, FP32, ReLU: per-request overhead dominates.
- ``mlp_large``: 784 -> 4096 -> 4096 -> 4096 -> 10, FP32, ReLU: compute dominates.
- ``identity``: 784 floats in, the same 784 floats out: no compute, only serving overhead.
- ``mlp_tiny``: 784 -> 32 -> 10: for the harness's own tests.

Every model takes ``input`` [batch, 784] FP32 and answers ``logits`` [batch, 10] (``output``
[batch, 784] for ``identity``). Every format's file of one model holds the same weights, so
all compute the same function; the AOTInductor package is compiled for this machine's CPU.
Nothing is downloaded: weights come from ``numpy.random.default_rng(SEED)`` (He-scaled normal,
so activations neither vanish nor blow up).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261129
OPSET = 17
INPUT_SIZE = 784
#: Bumped when a builder changes, so cached files are rebuilt.
BUILD_VERSION = 1
#: What torch 2.13's AOTInductor compile warns about on the way (scripts/build_model_repo.py has the why).
AOTI_COMPILE_WARNINGS = ((r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
                         (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning))

FORMATS = ("onnx", "torchscript", "torch_export", "torch_aoti")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2", "torch_aoti": "model.pt2"}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A benchmark model: an MLP with these layer widths, or an identity when ``layers`` is one width."""

    name: str
    layers: tuple[int, ...]
    description: str

    @property
    def identity(self) -> bool:
        return len(self.layers) == 1

    @property
    def input_name(self) -> str:
        return "input"

    @property
    def output_name(self) -> str:
        return "output" if self.identity else "logits"

    @property
    def input_size(self) -> int:
        return self.layers[0]

    @property
    def output_size(self) -> int:
        return self.layers[-1]

    def served_name(self, fmt: str) -> str:
        """The model's folder (and served name) for a format: ``mlp_large``, ``mlp_large_torchscript``."""
        return self.name if fmt == "onnx" else f"{self.name}_{fmt}"

    def stamp(self) -> str:
        return f"{self.name} {self.layers} seed={SEED} build={BUILD_VERSION}"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp_small", (INPUT_SIZE, 2048, 2048, 10), "MLP 784-2048-2048-10, FP32"),
        ModelSpec("mlp_large", (INPUT_SIZE, 4096, 4096, 4096, 10), "MLP 784-4096-4096-4096-10, FP32"),
        ModelSpec("identity", (INPUT_SIZE,), "identity of 784 FP32 (no compute)"),
        ModelSpec("mlp_tiny", (INPUT_SIZE, 32, 10), "MLP 784-32-10, FP32 (harness tests)"),
    )
}


def weights(spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W [in, out], b [out]) per layer, FP32, from the fixed seed."""
    rng = np.random.default_rng(SEED)
    layers = []
    for fan_in, fan_out in zip(spec.layers, spec.layers[1:], strict=False):
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        b = (rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)).astype(np.float32)
        layers.append((w, b))
    return layers


def sample_input(spec: ModelSpec, rows: int, seed: int = 1) -> np.ndarray:
    """A deterministic [rows, input_size] FP32 batch in [0, 1) (like normalised pixels)."""
    return np.random.default_rng(seed).random((rows, spec.input_size), dtype=np.float32)


def reference(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """The model computed with numpy: what both formats must answer."""
    if spec.identity:
        return x
    h = x
    params = weights(spec)
    for index, (w, b) in enumerate(params):
        h = h @ w + b
        if index < len(params) - 1:
            h = np.maximum(h, 0)
    return h


def build_onnx(spec: ModelSpec, path: Path) -> None:
    """Write ``spec`` as an ONNX model (Gemm + Relu per layer) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT, ["batch", spec.input_size])
    y = helper.make_tensor_value_info(spec.output_name, TensorProto.FLOAT, ["batch", spec.output_size])
    if spec.identity:
        graph = helper.make_graph([helper.make_node("Identity", [spec.input_name], [spec.output_name])],
                                  spec.name, [x], [y])
    else:
        nodes, initializers = [], []
        params = weights(spec)
        current = spec.input_name
        for index, (w, b) in enumerate(params):
            last = index == len(params) - 1
            initializers += [numpy_helper.from_array(w, f"w{index}"), numpy_helper.from_array(b, f"b{index}")]
            out = spec.output_name if last else f"gemm{index}"
            nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [out]))
            if not last:
                nodes.append(helper.make_node("Relu", [out], [f"relu{index}"]))
                out = f"relu{index}"
            current = out
        graph = helper.make_graph(nodes, spec.name, [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tensorgate-bench")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _torch_module(spec: ModelSpec) -> Any:
    """``spec`` as a ``torch.nn.Sequential`` whose ``forward(input)`` returns one tensor."""
    import torch

    layers: list[torch.nn.Module] = []
    if spec.identity:
        layers.append(torch.nn.Identity())
    else:
        params = weights(spec)
        for index, (w, b) in enumerate(params):
            linear = torch.nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            if index < len(params) - 1:
                layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def build_torchscript(spec: ModelSpec, path: Path) -> None:
    """Write ``spec`` as a TorchScript module."""
    import torch

    module = _torch_module(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit; TorchScript files are what this format is.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path))


def _program(spec: ModelSpec) -> Any:
    """``spec`` exported by ``torch.export`` with a dynamic, unbounded batch dimension."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(_torch_module(spec), (torch.zeros(2, spec.input_size),),
                               dynamic_shapes={"input": {0: batch}})


def build_torch_export(spec: ModelSpec, path: Path) -> None:
    """Write ``spec`` as a ``torch.export`` program."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_program(spec), str(path))


def build_torch_aoti(spec: ModelSpec, path: Path) -> None:
    """Compile ``spec`` with AOTInductor for the CPU (default options) into the package ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        for message, category in AOTI_COMPILE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch._inductor.aoti_compile_and_package(_program(spec), package_path=str(path))


def build(spec: ModelSpec, fmt: str, path: Path) -> None:
    if fmt == "onnx":
        build_onnx(spec, path)
    elif fmt == "torchscript":
        build_torchscript(spec, path)
    elif fmt == "torch_export":
        build_torch_export(spec, path)
    elif fmt == "torch_aoti":
        build_torch_aoti(spec, path)
    else:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
