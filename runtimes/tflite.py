"""LiteRT (TensorFlow Lite) adapter: platform ``tflite``, file ``model.tflite``.

Run by the LiteRT interpreter from PyPI (``ai-edge-litert``), with its default XNNPACK CPU
delegate. Names, dtypes and shapes come from the model, so the config may leave inputs and
outputs out: the signature's own keys when the model has a signature (``parameters.
signature_name``, needed only when it has several), else the tensor names. A -1 in a
tensor's shape signature is a dynamic dimension.

Batching: a dynamic batch dimension is resized to each batch's rows (``resize_tensor_input``
and ``allocate_tensors``, only when the shape differs from the interpreter's last one). A model
converted with a fixed batch N is still served with a variable batch: each batch runs in
pieces of N rows, the last one padded with zeros, and the padding is dropped from the outputs.

Instances: an Interpreter is not thread-safe, so each instance owns one (all mapping the same
file) and a batch borrows a free one; the scheduler never runs more batches at once than there
are instances. Threads: ``intra_op_threads`` (default: the CPUs divided among the instances)
is each interpreter's ``num_threads``.

Quantized inputs and outputs (int8, uint8 or int16 with a scale and zero point) are served as
FP32: inputs are quantized (round half away from zero, clamped, as TFLite's Quantize op) and
outputs dequantized here. ``raw_quantized: true`` serves the integer tensors as they are.
LiteRT's PyPI build has no delegate for NVIDIA GPUs, so ``cuda:N`` is refused.
"""

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from gateway.contract import LoadModel, Signature, TensorSpec
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter, cuda_index, default_threads, pad_rows

MODEL_FILE = "model.tflite"

_DATATYPES: dict[np.dtype[Any], str] = {np.dtype(k): v for k, v in {
    np.bool_: "BOOL", np.uint8: "UINT8", np.uint16: "UINT16", np.uint32: "UINT32", np.uint64: "UINT64",
    np.int8: "INT8", np.int16: "INT16", np.int32: "INT32", np.int64: "INT64", np.float16: "FP16",
    np.float32: "FP32", np.float64: "FP64",
}.items()}
_QUANTIZED = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)}


@dataclass(frozen=True)
class _Tensor:
    """One model input or output: its served name, interpreter index and dtype, and how it is served."""

    name: str
    index: int
    dtype: np.dtype[Any]
    #: The model's shape signature (-1: dynamic).
    shape: tuple[int, ...]
    #: (scale, zero point) when served as FP32 for a quantized tensor, else None.
    quantization: tuple[float, int] | None

    @property
    def datatype(self) -> str:
        return "FP32" if self.quantization else _DATATYPES[self.dtype]

    def quantize(self, array: np.ndarray) -> np.ndarray:
        if self.quantization is None:
            return array
        scale, zero_point = self.quantization
        scaled = array.astype(np.float32) / np.float32(scale)
        rounded = np.trunc(scaled + np.copysign(np.float32(0.5), scaled)) + zero_point
        limits = np.iinfo(self.dtype)
        quantized: np.ndarray = np.clip(rounded, limits.min, limits.max).astype(self.dtype)
        return quantized

    def dequantize(self, array: np.ndarray) -> np.ndarray:
        if self.quantization is None:
            return array
        scale, zero_point = self.quantization
        return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class _Instance:
    """One interpreter and the input shapes it is allocated for."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # a bad flatbuffer, an unknown op, a failed allocation
            raise ModelLoadError(f"{path}: not a loadable TFLite model: {_first_line(exc)}") from None
        self._shapes: dict[int, tuple[int, ...]] = {}

    def run(self, feed: list[tuple[_Tensor, np.ndarray]], outputs: list[_Tensor]) -> list[np.ndarray]:
        if any(self._shapes.get(t.index) != a.shape for t, a in feed):
            for tensor, array in feed:
                self.interpreter.resize_tensor_input(tensor.index, list(array.shape), strict=True)
            self.interpreter.allocate_tensors()
            self._shapes = {t.index: a.shape for t, a in feed}
        for tensor, array in feed:
            self.interpreter.set_tensor(tensor.index, array)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(t.index) for t in outputs]


class TFLiteAdapter(RuntimeAdapter):
    """One .tflite model in one interpreter per instance."""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        self._path = Path(spec.path) / (spec.filename or MODEL_FILE)
        if not self._path.is_file():
            raise ModelLoadError(f"{self._path}: model file not found")
        if cuda_index(spec.device) is not None:
            raise ModelLoadError(f"{self._path}: device {spec.device} requested, but LiteRT's interpreter from PyPI "
                                 "has no NVIDIA GPU delegate; use device: cpu")
        params = spec.parameters
        threads = int(params.get("intra_op_threads", default_threads(spec.instances)))
        first = _Instance(self._path, threads)
        raw = _flag(self._path, "raw_quantized", params.get("raw_quantized", False))
        inputs, outputs = _tensors(self._path, first.interpreter, params.get("signature_name"), raw)
        self._fixed_batch = self._batch_of(inputs + outputs)
        self._inputs = {t.name: (t, self._served(t)) for t in inputs}
        self._outputs = {t.name: t for t in outputs}
        self._signature = Signature(tuple(s for _, s in self._inputs.values()),
                                    tuple(self._served(t) for t in outputs))
        self._free: queue.SimpleQueue[_Instance] = queue.SimpleQueue()
        self._free.put(first)
        for _ in range(spec.instances - 1):
            self._free.put(_Instance(self._path, threads))

    def _batch_of(self, tensors: list[_Tensor]) -> int | None:
        """The model's fixed batch size when it has one and the config batches (None: dynamic or unbatched)."""
        if self.spec.max_batch_size == 0:
            return None
        firsts = {t.shape[0] if t.shape else 0 for t in tensors}
        if 0 in firsts:
            scalar = next(t.name for t in tensors if not t.shape)
            raise ModelLoadError(f"{self._path}: tensor '{scalar}' is a scalar, but max_batch_size > 0 "
                                 "(set max_batch_size: 0 to serve it unbatched)")
        if firsts == {-1}:
            return None
        if len(firsts) == 1:
            return firsts.pop()
        raise ModelLoadError(f"{self._path}: the tensors' first dimensions {sorted(firsts)} are no common batch "
                             "dimension (set max_batch_size: 0 to serve the shapes as they are)")

    def _served(self, tensor: _Tensor) -> TensorSpec:
        """The tensor as clients see it: a fixed batch dimension is served as a variable one."""
        shape = tensor.shape if self.spec.max_batch_size == 0 else (-1, *tensor.shape[1:])
        return TensorSpec(tensor.name, tensor.datatype, shape)

    def signature(self) -> Signature:
        return self._signature

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = [(self._input(name, array), array) for name, array in inputs.items()]
        unknown = sorted(set(outputs) - set(self._outputs))
        if unknown:
            raise InvalidInput(f"the model has no output {', '.join(map(repr, unknown))}")
        wanted = [self._outputs[name] for name in outputs]
        instance = self._free.get()
        try:
            if self._fixed_batch is None:
                results = instance.run([(t, t.quantize(a)) for t, a in feed], wanted)
            else:
                results = self._run_pieces(instance, feed, wanted, self._fixed_batch)
        finally:
            self._free.put(instance)
        return {t.name: t.dequantize(r) for t, r in zip(wanted, results, strict=True)}

    def _input(self, name: str, array: np.ndarray) -> _Tensor:
        """The input ``name``, once ``array`` is known to fit it."""
        entry = self._inputs.get(name)
        if entry is None:
            raise InvalidInput(f"the model has no input '{name}'")
        tensor, served = entry
        if _DATATYPES.get(array.dtype) != served.datatype:
            raise InvalidInput(f"input '{name}': {array.dtype} does not fit the model's {served.datatype}")
        if not served.accepts(array.shape):
            raise InvalidInput(f"input '{name}': shape {list(array.shape)} does not fit the model's "
                               f"{list(served.shape)}")
        return tensor

    def _run_pieces(self, instance: _Instance, feed: list[tuple[_Tensor, np.ndarray]], outputs: list[_Tensor],
                    batch: int) -> list[np.ndarray]:
        """Run ``feed`` in pieces of the model's fixed ``batch`` rows, and join the rows that were asked for."""
        rows = len(feed[0][1]) if feed else 0
        pieces: list[list[np.ndarray]] = []
        for start in range(0, rows, batch):
            part = [(t, t.quantize(pad_rows(a[start:start + batch], batch))) for t, a in feed]
            pieces.append([r[:rows - start] for r in instance.run(part, outputs)])
        return [np.concatenate(column) for column in zip(*pieces, strict=True)]

    def close(self) -> None:
        while not self._free.empty():
            self._free.get_nowait()


def _tensors(path: Path, interpreter: Interpreter, signature_name: Any,
             raw: bool) -> tuple[list[_Tensor], list[_Tensor]]:
    """The served inputs and outputs: under the signature's keys when the model has one, else tensor names."""
    inputs = {d["index"]: d for d in interpreter.get_input_details()}
    outputs = {d["index"]: d for d in interpreter.get_output_details()}
    signatures = interpreter.get_signature_list()
    if not signatures:
        if signature_name:
            raise ModelLoadError(f"{path}: parameters.signature_name is '{signature_name}', "
                                 "but the model has no signatures")
        return ([_tensor(path, d["name"], d, raw) for d in inputs.values()],
                [_tensor(path, d["name"], d, raw) for d in outputs.values()])
    key = str(signature_name) if signature_name else None
    if key is None and len(signatures) > 1:
        raise ModelLoadError(f"{path}: the model has signatures {sorted(signatures)}; "
                             "set parameters.signature_name")
    if key is not None and key not in signatures:
        raise ModelLoadError(f"{path}: no signature '{key}' (it has {sorted(signatures)}); "
                             "set parameters.signature_name")
    runner = interpreter.get_signature_runner(key)
    named_inputs, named_outputs = runner.get_input_details(), runner.get_output_details()
    if any(d["index"] not in inputs for d in named_inputs.values()) or any(
            d["index"] not in outputs for d in named_outputs.values()):
        raise ModelLoadError(f"{path}: signature '{key or next(iter(signatures))}' is not the model's main "
                             "subgraph, which is the one served")
    return ([_tensor(path, name, inputs[d["index"]], raw) for name, d in sorted(named_inputs.items())],
            [_tensor(path, name, outputs[d["index"]], raw) for name, d in sorted(named_outputs.items())])


def _tensor(path: Path, name: str, details: dict[str, Any], raw: bool) -> _Tensor:
    dtype = np.dtype(details["dtype"])
    if dtype not in _DATATYPES:
        raise ModelLoadError(f"{path}: tensor '{name}' has dtype {dtype}, which cannot be served")
    scales = details["quantization_parameters"]["scales"]
    quantization = None
    if dtype in _QUANTIZED and len(scales) and not raw:
        if len(scales) > 1:
            raise ModelLoadError(f"{path}: tensor '{name}' is quantized per channel; serve its integers as they "
                                 "are with parameters.raw_quantized: true")
        quantization = (float(scales[0]), int(details["quantization_parameters"]["zero_points"][0]))
    return _Tensor(name, int(details["index"]), dtype, tuple(int(d) for d in details["shape_signature"]), quantization)


def _flag(path: Path, name: str, value: object) -> bool:
    """A boolean parameter: YAML's true/false, or the text a config.pbtxt gives."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ModelLoadError(f"{path}: parameters.{name} is '{value}', not true or false")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
