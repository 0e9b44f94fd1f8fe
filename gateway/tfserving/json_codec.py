"""TF Serving's REST JSON <-> arrays: the row (``instances``) and columnar (``inputs``) formats.

A JSON value carries no datatype: each input is read as the datatype of the model input it is
for. Binary DT_STRING values travel as ``{"b64": "..."}``; on the way out, DT_STRING outputs
whose name ends in ``_bytes`` (TF Serving's rule), or that are not UTF-8, are written that way.
TF Serving's JSON allows ``NaN`` and ``Infinity``: requests that hold them are parsed with the
standard library's reader, and replies that hold them are written with its writer.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.contract import TensorSpec
from gateway.protocol.datatypes import numpy_dtype
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.types import InferOutput

#: The web-safe base64 alphabet's two letters, read as the standard alphabet's (both are accepted).
_WEB_SAFE = str.maketrans("-_", "+/")
#: numpy kinds of parsed JSON values each kind of datatype accepts.
_ACCEPTED_KINDS = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A parsed :predict body: the signature, the format, and each input's JSON value (None: unnamed)."""

    signature_name: str
    row_format: bool
    values: dict[str | None, Any]


def parse_predict_body(body: bytes) -> PredictBody:
    document = _loads(body)
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    signature = document.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidRequest("'signature_name' must be a string")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        raise InvalidRequest("the request must have either 'instances' (row format) or 'inputs' (columnar format)"
                             + (", not both" if has_instances else ""))
    unknown = sorted(set(document) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} in the request (known: signature_name, "
                             f"instances, inputs)")
    if has_instances:
        return PredictBody(signature, True, _rows(document["instances"]))
    columns = document["inputs"]
    if isinstance(columns, dict) and not _is_b64(columns):
        if not columns:
            raise InvalidRequest("'inputs' is an empty object: give at least one input")
        return PredictBody(signature, False, dict(columns))
    return PredictBody(signature, False, {None: columns})


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # NaN, Infinity and -Infinity, which TF Serving's JSON allows
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON in the request body: {exc}") from None


def _rows(instances: object) -> dict[str | None, Any]:
    """``instances`` regrouped by input: each input's values stacked along a new first dimension."""
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("'instances' must be a non-empty list (one entry per instance)")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        return {None: instances}
    if not all(named):
        raise InvalidRequest("'instances' mixes objects of named inputs with bare values: use one form for all")
    names = list(instances[0])
    for position, instance in enumerate(instances):
        if sorted(instance) != sorted(names):
            raise InvalidRequest(f"instances[{position}] has inputs {sorted(instance)} but instances[0] has "
                                 f"{sorted(names)}: every instance names the same inputs")
    return {name: [instance[name] for instance in instances] for name in names}


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def to_array(value: object, spec: TensorSpec, where: str) -> np.ndarray:
    """The JSON ``value`` as an array of ``spec``'s datatype; ``where`` names it in errors."""
    if spec.datatype == "BYTES":
        return _bytes_array(value, where)
    try:
        parsed = np.asarray(value)
    except ValueError:
        raise InvalidRequest(f"{where} is ragged: every list at one depth must have the same length") from None
    dtype = numpy_dtype(spec.datatype)
    if parsed.size and parsed.dtype.kind not in _ACCEPTED_KINDS.get(dtype.kind, "biuf"):
        raise InvalidRequest(f"{where}: the values are not valid {spec.datatype} values (the model's input "
                             f"'{spec.name}' is {spec.datatype})")
    if dtype.kind in "iu" and parsed.size:
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise InvalidRequest(f"{where}: values out of range for {spec.datatype}")
    return parsed.astype(dtype, copy=False)


def _bytes_array(value: object, where: str) -> np.ndarray:
    shape = _nested_shape(value, where)
    flat: list[bytes] = []
    _collect_bytes(value, flat, where)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _nested_shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = _nested_shape(value[0], where)
    for item in value[1:]:
        if _nested_shape(item, where) != inner:
            raise InvalidRequest(f"{where} is ragged: every list at one depth must have the same length")
    return (len(value), *inner)


def _collect_bytes(value: object, out: list[bytes], where: str) -> None:
    if isinstance(value, list):
        for item in value:
            _collect_bytes(item, out, where)
    elif isinstance(value, str):
        out.append(value.encode())
    elif _is_b64(value):
        assert isinstance(value, dict)
        encoded = value["b64"]
        try:
            if not isinstance(encoded, str):
                raise ValueError
            out.append(base64.b64decode(encoded.translate(_WEB_SAFE), validate=True))
        except (ValueError, binascii.Error):
            raise InvalidRequest(f"{where}: the 'b64' value {str(encoded)[:40]!r} is not valid base64") from None
    else:
        raise InvalidRequest(f"{where}: DT_STRING values are strings or {{\"b64\": \"...\"}} objects, "
                             f"not {type(value).__name__}")


def encode_predictions(outputs: list[InferOutput], row_format: bool) -> bytes:
    """``{"predictions": ...}`` (row format) or ``{"outputs": ...}`` (columnar), shaped as TF Serving shapes them:
    one output by itself, several by name (per instance in the row format)."""
    values = {o.name: _json_value(o) for o in outputs}
    if not row_format:
        document: dict[str, Any] = {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    elif len(values) == 1:
        document = {"predictions": next(iter(values.values()))}
    else:
        rows = {len(v) if isinstance(v, list | np.ndarray) and np.ndim(v) else None for v in values.values()}
        if len(rows) != 1 or None in rows:
            raise InvalidRequest("the model's outputs do not share their first dimension, so they cannot be "
                                 "split into instances: send the request in the columnar format ('inputs')")
        count = rows.pop()
        assert count is not None
        document = {"predictions": [{name: value[i] for name, value in values.items()} for i in range(count)]}
    if all(_finite(o) for o in outputs):
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(document, default=lambda a: a.tolist()).encode()  # writes NaN, Infinity


def _json_value(output: InferOutput) -> Any:
    data = output.data
    if data.dtype.kind == "O":
        binary = output.name.endswith("_bytes")
        flat = np.empty(data.size, dtype=object)
        flat[:] = [_string_value(e, binary) for e in data.reshape(-1)]
        return flat.reshape(data.shape).tolist()
    if data.dtype.kind == "V":  # ml_dtypes' bfloat16 (a numpy dtype of kind V)
        data = data.astype(np.float32)
    return np.ascontiguousarray(data)


def _string_value(element: object, binary: bool) -> Any:
    raw = element if isinstance(element, bytes) else str(element).encode()
    if not binary:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode()}


def _finite(output: InferOutput) -> bool:
    data = output.data
    if data.dtype.kind in "biuO" or not data.size:
        return True
    return bool(np.isfinite(data).all())
