"""ONNX Runtime adapter: platform ``onnx`` (alias ``onnxruntime_onnx``), file ``model.onnx``.

ONNX carries names, element types and shapes, so the config may leave inputs and outputs
out. Threads: ``intra_op_threads`` (default: the CPUs divided among the instances) and
``inter_op_threads`` (default 1); idle ORT threads do not spin, so a quiet model leaves
its cores to the gateway and the other workers.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.contract import LoadModel, Signature, TensorSpec
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter, cuda_index, default_threads

MODEL_FILE = "model.onnx"

_DATATYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES", "tensor(bfloat16)": "BF16",
}


class OnnxRuntimeAdapter(RuntimeAdapter):
    """One ONNX model in one InferenceSession, shared by the instance threads."""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        path = Path(spec.path) / (spec.filename or MODEL_FILE)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        options = ort.SessionOptions()
        params = spec.parameters
        options.intra_op_num_threads = int(params.get("intra_op_threads", default_threads(spec.instances)))
        options.inter_op_num_threads = int(params.get("inter_op_threads", 1))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 4  # failures reach the client and our own log; ORT need not print them
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=_providers(spec.device))
        except Exception as exc:  # ORT raises bare Exception subclasses for every load failure
            raise ModelLoadError(f"{path}: {exc}") from None
        self._signature = Signature(
            tuple(_spec(i) for i in self._session.get_inputs()),
            tuple(_spec(o) for o in self._session.get_outputs()),
        )
        self._strings = {t.name for t in self._signature.inputs if t.datatype == "BYTES"}

    def signature(self) -> Signature:
        return self._signature

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {name: _to_text(name, a) if name in self._strings else a for name, a in inputs.items()}
        try:
            results = self._session.run(outputs, feed)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
            raise InvalidInput(str(exc)) from None
        return {name: _from_text(r) if r.dtype.kind in "OU" else r
                for name, r in zip(outputs, results, strict=True)}


def _providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    index = cuda_index(device)
    if index is None:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError(f"device {device} requested, but this onnxruntime build has no CUDA provider "
                             "(install onnxruntime-gpu on a machine with an NVIDIA GPU)")
    return [("CUDAExecutionProvider", {"device_id": str(index)}), "CPUExecutionProvider"]


def _spec(node: ort.NodeArg) -> TensorSpec:
    datatype = _DATATYPES.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{node.name}' has type {node.type}, which cannot be served")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, shape)


def _to_text(name: str, array: np.ndarray) -> np.ndarray:
    """ORT string tensors hold str; the protocol's BYTES are bytes, so decode them as UTF-8."""
    try:
        return np.array([b.decode() for b in array.reshape(-1)], dtype=object).reshape(array.shape)
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': ONNX string tensors must hold UTF-8 text") from None


def _from_text(array: np.ndarray) -> np.ndarray:
    return np.array([str(s).encode() for s in array.reshape(-1)], dtype=object).reshape(array.shape)
