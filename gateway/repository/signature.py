"""A model's served signature: the config's inputs and outputs, checked against the model.

Formats that carry a signature (ONNX, SavedModel, JAX export) report it when loaded; the
config may then omit inputs and outputs. Where both exist they must agree, so a config
that contradicts the model fails at load time rather than on the first request. A format
that knows its inputs but not its outputs (AOTInductor) reports no outputs; the config's
are then served as they are.
"""

from gateway.contract import Signature, TensorSpec
from gateway.repository.config import ModelConfig, TensorConfig


class SignatureMismatch(Exception):
    """The config and the model disagree about a tensor."""


def resolve_signature(config: ModelConfig, model: Signature | None, source: str) -> Signature:
    """Merge the config with what the model file says (``model`` uses full shapes, batch included).

    ``source`` names the model file in error messages.
    """
    if model is None:
        if config.inputs is None or config.outputs is None:
            raise SignatureMismatch(f"{source}: this format carries no signature; "
                                    "the config must list inputs and outputs")
        return Signature(_specs(config.inputs), _specs(config.outputs))
    served_inputs = _strip_batch(model.inputs, config.max_batch_size, source)
    inputs = _reconcile(config.inputs, served_inputs, "input", source)
    if not model.outputs:
        if config.outputs is None:
            raise SignatureMismatch(f"{source}: this format does not describe its outputs; the config must list them")
        return Signature(inputs, _specs(config.outputs))
    served_outputs = _strip_batch(model.outputs, config.max_batch_size, source)
    return Signature(inputs, _reconcile(config.outputs, served_outputs, "output", source))


def _specs(tensors: list[TensorConfig]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)


def _strip_batch(tensors: tuple[TensorSpec, ...], max_batch_size: int,
                 source: str) -> tuple[TensorSpec, ...]:
    if max_batch_size == 0:
        return tensors
    out = []
    for t in tensors:
        if not t.shape or t.shape[0] != -1:
            raise SignatureMismatch(
                f"{source}: {t.name} has shape {list(t.shape)} with no variable batch dimension, "
                "but max_batch_size > 0 (set max_batch_size: 0 to serve it unbatched)"
            )
        out.append(TensorSpec(t.name, t.datatype, t.shape[1:]))
    return tuple(out)


def _reconcile(configured: list[TensorConfig] | None, actual: tuple[TensorSpec, ...], kind: str,
               source: str) -> tuple[TensorSpec, ...]:
    if configured is None:
        return actual
    by_name = {t.name: t for t in actual}
    out = []
    for c in configured:
        real = by_name.get(c.name)
        if real is None:
            raise SignatureMismatch(
                f"{source}: the config names {kind} '{c.name}' but the model's {kind}s are "
                f"{sorted(by_name)}"
            )
        if real.datatype != c.datatype:
            raise SignatureMismatch(
                f"{source}: {kind} '{c.name}' is {real.datatype} in the model but {c.datatype} "
                "in the config"
            )
        if not real.accepts(tuple(c.shape)):
            raise SignatureMismatch(
                f"{source}: {kind} '{c.name}' has shape {list(real.shape)} in the model but "
                f"{list(c.shape)} in the config"
            )
        out.append(TensorSpec(c.name, c.datatype, tuple(c.shape)))
    if kind == "input" and len(configured) != len(actual):
        missing = sorted(set(by_name) - {c.name for c in configured})
        raise SignatureMismatch(f"{source}: the config leaves out model inputs {missing}")
    return tuple(out)
