"""Check a decoded request against the model it is for, before it is queued.

Everything a client can get wrong about a model is caught here with a message that names
the tensor, so a bad request never reaches a worker and never shares a batch with others.
"""

import numpy as np

from gateway.contract import Signature, TensorSpec
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.types import InferRequest


def validate_request(request: InferRequest, signature: Signature, max_batch_size: int,
                     model: str) -> tuple[dict[str, np.ndarray], list[str], int]:
    """The model's inputs by name, the output names to compute, and the batch size (1 if unbatched)."""
    expected = {spec.name: spec for spec in signature.inputs}
    inputs: dict[str, np.ndarray] = {}
    batch_sizes: set[int] = set()
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidRequest(
                f"model '{model}' has no input '{tensor.name}' (its inputs: {', '.join(expected)})"
            )
        if tensor.name in inputs:
            raise InvalidRequest(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidRequest(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match the model's {spec.datatype}"
            )
        batch_sizes.add(_check_shape(tensor.shape, spec, max_batch_size))
        inputs[tensor.name] = tensor.data
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidRequest(f"model '{model}' needs input(s) {', '.join(missing)}, not given")
    if len(batch_sizes) > 1:
        raise InvalidRequest(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    return inputs, _output_names(request, signature, model), batch_sizes.pop()


def _check_shape(shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int) -> int:
    dims = shape
    batch = 1
    if max_batch_size > 0:
        if len(shape) != len(spec.shape) + 1:
            raise InvalidRequest(
                f"input '{spec.name}': shape {list(shape)} should be [batch, {_dims(spec.shape)}]"
            )
        batch, dims = shape[0], shape[1:]
        if batch < 1:
            raise InvalidRequest(f"input '{spec.name}': the batch dimension must be at least 1")
        if batch > max_batch_size:
            raise InvalidRequest(
                f"input '{spec.name}': batch size {batch} exceeds the model's max_batch_size {max_batch_size}"
            )
    if not spec.accepts(dims):
        expected = f"[batch, {_dims(spec.shape)}]" if max_batch_size > 0 else f"[{_dims(spec.shape)}]"
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} does not match the model's {expected}")
    return batch


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _output_names(request: InferRequest, signature: Signature, model: str) -> list[str]:
    known = [spec.name for spec in signature.outputs]
    if request.outputs is None:
        return known
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in known:
            raise InvalidRequest(f"model '{model}' has no output '{name}' (its outputs: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise InvalidRequest("an output is requested more than once")
    return names
