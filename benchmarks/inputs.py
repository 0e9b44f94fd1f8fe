"""The inputs of any Open Inference Protocol model, generated from what the server says about it.

``GET /v2/models/{m}`` gives each input's name, datatype and shape (-1: a variable dim);
``GET /v2/models/{m}/config`` (TensorGate and Triton serve it, KServe runtimes may not) gives
``max_batch_size``. Without a config, a model whose inputs all start with -1 is taken to batch
along that dim. Variable dims other than the batch dim come from ``--shape NAME:d1,d2,...``
(the dims after the batch dim, like perf_analyzer's ``--shape``); ``--batch-size`` sets the rows.

The data is seeded (one generator, the inputs in metadata order), so every run and every
protocol sends the same request: floats in [0, 1) (FP16 and BF16 rounded from FP32), integers
in [0, 10), BOOL at random, BYTES as lowercase ASCII strings of 1 to 8 characters. The harness's
own FP32 models get exactly the data ``benchmarks.models.sample_input`` makes.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The protocol's datatypes and numpy's names for them (BF16: ml_dtypes, imported when needed).
NUMPY_DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BF16": "bfloat16", "BYTES": "object",
}
INT_RANGE = (0, 10)
BYTES_LENGTH = (1, 8)
SEED = 1


class BenchError(RuntimeError):
    """A mistake in what was asked, or a refusal by the server: reported in a line, no traceback."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    datatype: str
    #: As the metadata states it: with the batch dim (-1) when the model batches.
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    """A served model as the harness needs it."""

    model: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    #: Whether requests carry a leading batch dim.
    batching: bool
    #: From the model's config; None when the server serves no config.
    max_batch_size: int | None
    #: The config's parameters (string values), e.g. the framework's thread counts.
    parameters: dict[str, str]

    def row_shape(self, tensor: TensorInfo) -> tuple[int, ...]:
        """The tensor's dims after the batch dim (all of them for a model that does not batch)."""
        return tensor.shape[1:] if self.batching else tensor.shape

    def batch_text(self) -> str:
        if self.max_batch_size is not None:
            return (f"max_batch_size {self.max_batch_size} (model config)" if self.batching
                    else "no batch dim (model config: max_batch_size 0)")
        return ("batch dim assumed from the metadata (every input starts with -1; the server serves no config)"
                if self.batching else "no batch dim (metadata; the server serves no config)")


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray


def http_json(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              timeout: float = 30.0) -> tuple[int, Any, bytes]:
    """(status, parsed JSON or None, raw body) of a GET (or a POST with ``body``); HTTP errors are returned,
    an unreachable server raises ``BenchError``."""
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise BenchError(f"no server answered at {url}: {reason}") from None
    try:
        document = json.loads(raw) if raw else None
    except ValueError:
        document = None
    return status, document, raw


def error_text(status: int, document: Any, raw: bytes) -> str:
    """The server's own words for a refusal: the v2 ``{"error": ...}``, else the start of the body."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return f"HTTP {status}: {document['error']}"
    return f"HTTP {status}: {raw[:300].decode(errors='replace')}"


def served_models(http_url: str) -> list[str]:
    """The model names the server lists (TensorGate's ``GET /v2/models``, Triton's repository index)."""
    for url, body in ((f"{http_url}/v2/models", None), (f"{http_url}/v2/repository/index", b"{}")):
        try:
            status, document, _ = http_json(url, body, {"Content-Type": "application/json"}, timeout=5)
        except BenchError:
            return []
        items = document.get("models") if isinstance(document, dict) else document
        if status == 200 and isinstance(items, list):
            return sorted({str(i["name"]) for i in items if isinstance(i, dict) and "name" in i})
    return []


def _tensors(document: dict[str, Any], key: str, model: str) -> tuple[TensorInfo, ...]:
    found = []
    for item in document.get(key) or []:
        try:
            found.append(TensorInfo(str(item["name"]), str(item["datatype"]), tuple(int(d) for d in item["shape"])))
        except (KeyError, TypeError, ValueError):
            raise BenchError(f"model {model!r}: the metadata's {key} entry {item!r} lacks a name, "
                             "datatype or shape") from None
    return tuple(found)


def fetch_signature(http_url: str, model: str) -> Signature:
    """Read ``model``'s metadata (and config, where the server has one)."""
    quoted = urllib.parse.quote(model, safe="")
    status, document, raw = http_json(f"{http_url}/v2/models/{quoted}")
    if status != 200 or not isinstance(document, dict):
        names = served_models(http_url)
        listed = f"; the server lists: {', '.join(names)}" if names else ""
        raise BenchError(f"model {model!r} at {http_url}: {error_text(status, document, raw)}{listed}")
    inputs = _tensors(document, "inputs", model)
    if not inputs:
        raise BenchError(f"model {model!r}: its metadata lists no inputs")
    for tensor in inputs:
        if tensor.datatype not in NUMPY_DTYPES:
            raise BenchError(f"model {model!r}: input {tensor.name!r} has datatype {tensor.datatype!r}, "
                             f"not one of {', '.join(NUMPY_DTYPES)}")
    max_batch_size: int | None = None
    parameters: dict[str, str] = {}
    status, config, _ = http_json(f"{http_url}/v2/models/{quoted}/config", timeout=10)
    if status == 200 and isinstance(config, dict) and isinstance(config.get("max_batch_size"), int):
        max_batch_size = int(config["max_batch_size"])
        for key, value in (config.get("parameters") or {}).items():
            parameters[str(key)] = str(value.get("string_value", "")) if isinstance(value, dict) else str(value)
    batching = (max_batch_size > 0 if max_batch_size is not None
                else all(t.shape and t.shape[0] == -1 for t in inputs))
    return Signature(model=model, versions=tuple(str(v) for v in document.get("versions") or ()),
                     platform=str(document.get("platform", "")), inputs=inputs,
                     outputs=_tensors(document, "outputs", model), batching=batching,
                     max_batch_size=max_batch_size, parameters=parameters)


def request_shapes(signature: Signature, given: dict[str, tuple[int, ...]], rows: int) -> dict[str, tuple[int, ...]]:
    """Each input's shape in one request of ``rows`` rows; ``given`` (``--shape``) holds the dims after the batch
    dim of some inputs (names that are not inputs of this model are ignored). ``BenchError`` names the input
    whose variable dim has no ``--shape``, or whose ``--shape`` does not fit."""
    model = signature.model
    if rows != 1 and not signature.batching:
        raise BenchError(f"--batch-size {rows}: model {model!r} has {signature.batch_text()}; "
                         "its requests have no rows to add")
    if signature.max_batch_size and rows > signature.max_batch_size:
        raise BenchError(f"--batch-size {rows} exceeds model {model!r}'s max_batch_size {signature.max_batch_size}")
    shapes = {}
    for tensor in signature.inputs:
        dims = signature.row_shape(tensor)
        wanted = given.get(tensor.name)
        stated = "[" + ", ".join(map(str, tensor.shape)) + "]"
        if wanted is not None:
            fits = len(wanted) == len(dims) and all(d in (-1, w) for d, w in zip(dims, wanted, strict=True))
            if not fits:
                after = " after the batch dim" if signature.batching else ""
                raise BenchError(f"--shape {tensor.name}:{','.join(map(str, wanted))} does not fit input "
                                 f"{tensor.name!r} of model {model!r}: its metadata shape is {stated}; give its "
                                 f"{len(dims)} dims{after}, keeping the fixed ones")
            dims = wanted
        elif -1 in dims:
            example = ",".join("N" if d == -1 else str(d) for d in dims)
            raise BenchError(f"input {tensor.name!r} of model {model!r} has a variable dim (metadata shape {stated}): "
                             f"give it with --shape {tensor.name}:{example}")
        shapes[tensor.name] = (rows, *dims) if signature.batching else tuple(dims)
    return shapes


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    if datatype == "BF16":
        import ml_dtypes

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(NUMPY_DTYPES[datatype])


def generate(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded data of ``datatype`` (see the module's docstring for the ranges)."""
    if datatype == "FP32":
        return rng.random(shape, dtype=np.float32)
    if datatype == "FP64":
        return rng.random(shape)
    if datatype in ("FP16", "BF16"):
        return rng.random(shape, dtype=np.float32).astype(numpy_dtype(datatype))
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype == "BYTES":
        count = int(np.prod(shape, dtype=np.int64))
        lengths = rng.integers(BYTES_LENGTH[0], BYTES_LENGTH[1] + 1, count)
        letters = rng.integers(ord("a"), ord("z") + 1, int(lengths.sum()), dtype=np.uint8).tobytes()
        out = np.empty(count, dtype=object)
        offset = 0
        for i, length in enumerate(lengths.tolist()):
            out[i] = letters[offset:offset + length]
            offset += length
        return out.reshape(shape)
    if datatype in NUMPY_DTYPES:
        return rng.integers(INT_RANGE[0], INT_RANGE[1], shape).astype(numpy_dtype(datatype))
    raise BenchError(f"unknown datatype {datatype!r}")


def generate_inputs(signature: Signature, shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(t.name, t.datatype, generate(t.datatype, shapes[t.name], rng)) for t in signature.inputs]


def describe(tensors: list[Tensor]) -> str:
    """``name DATATYPE [shape] (what values)`` per input."""
    kinds = {"BOOL": "true/false", "BYTES": f"ASCII strings of {BYTES_LENGTH[0]}-{BYTES_LENGTH[1]} bytes"}
    parts = []
    for t in tensors:
        kind = kinds.get(t.datatype) or ("floats in [0, 1)" if t.datatype.startswith(("FP", "BF"))
                                         else f"ints in [{INT_RANGE[0]}, {INT_RANGE[1]})")
        parts.append(f"{t.name} {t.datatype} {list(t.data.shape)} ({kind})")
    return ", ".join(parts)


def raw_bytes(tensor: Tensor) -> bytes:
    """The tensor's bytes on the wire (binary extension, ``raw_input_contents``): row-major, little-endian;
    BYTES elements each preceded by their length as 4 bytes little-endian."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data).reshape(-1).view(np.uint8).tobytes()


def json_data(tensor: Tensor) -> list[Any]:
    """The tensor's elements for a JSON ``data`` list, flat (BYTES as strings, FP16/BF16 as numbers)."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [e.decode() for e in flat]
    if tensor.datatype in ("FP16", "BF16"):
        flat = flat.astype(np.float32)
    values: list[Any] = flat.tolist()
    return values
