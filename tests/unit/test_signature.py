"""resolve_signature: the config's tensors merged with, and checked against, the model's own."""

from typing import Any

import pytest

from gateway.contract import Signature, TensorSpec
from gateway.repository.config import ModelConfig
from gateway.repository.signature import SignatureMismatch, resolve_signature

SOURCE = "/repo/m/1/model.onnx"


def _config(max_batch_size: int = 0, inputs: list[Any] | None = None, outputs: list[Any] | None = None) -> ModelConfig:
    document: dict[str, Any] = {"platform": "onnx", "max_batch_size": max_batch_size}
    if inputs is not None:
        document["inputs"] = inputs
    if outputs is not None:
        document["outputs"] = outputs
    return ModelConfig.model_validate(document)


def _t(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _model(inputs: list[tuple[str, str, tuple[int, ...]]],
           outputs: list[tuple[str, str, tuple[int, ...]]]) -> Signature:
    return Signature(tuple(TensorSpec(*t) for t in inputs), tuple(TensorSpec(*t) for t in outputs))


def _mismatch(config: ModelConfig, model: Signature | None) -> str:
    with pytest.raises(SignatureMismatch) as info:
        resolve_signature(config, model, SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    return message


# --- config only -----------------------------------------------------------------------------------------------


def test_config_only_uses_the_config() -> None:
    config = _config(4, [_t("x", "FP32", [3]), _t("k", "INT64", [-1])], [_t("y", "FP32", [2])])
    signature = resolve_signature(config, None, SOURCE)
    assert signature == Signature(
        (TensorSpec("x", "FP32", (3,)), TensorSpec("k", "INT64", (-1,))), (TensorSpec("y", "FP32", (2,)),))


@pytest.mark.parametrize(
    ("inputs", "outputs"), [(None, [_t("y", "FP32", [1])]), ([_t("x", "FP32", [1])], None), (None, None)]
)
def test_config_only_needs_inputs_and_outputs(inputs: list[Any] | None, outputs: list[Any] | None) -> None:
    message = _mismatch(_config(0, inputs, outputs), None)
    assert "the config must list inputs and outputs" in message


# --- model only ------------------------------------------------------------------------------------------------


def test_model_only_keeps_full_shapes_without_batching() -> None:
    model = _model([("x", "FP32", (2, 3))], [("y", "INT64", (2,))])
    assert resolve_signature(_config(0), model, SOURCE) == model


def test_model_only_strips_the_batch_dimension() -> None:
    model = _model([("x", "FP32", (-1, 3)), ("z", "BYTES", (-1,))], [("y", "FP32", (-1, 2, 2))])
    signature = resolve_signature(_config(8), model, SOURCE)
    assert signature.inputs == (TensorSpec("x", "FP32", (3,)), TensorSpec("z", "BYTES", ()))
    assert signature.outputs == (TensorSpec("y", "FP32", (2, 2)),)


# --- both: they must agree -------------------------------------------------------------------------------------


def test_config_and_model_that_agree() -> None:
    model = _model([("x", "FP32", (-1, 3))], [("y", "FP32", (-1, 1))])
    config = _config(4, [_t("x", "FP32", [3])], [_t("y", "FP32", [1])])
    assert resolve_signature(config, model, SOURCE) == _model([("x", "FP32", (3,))], [("y", "FP32", (1,))])


def test_config_may_fix_a_variable_model_dimension() -> None:
    model = _model([("x", "FP32", (-1, -1))], [("y", "FP32", (-1,))])
    config = _config(0, [_t("x", "FP32", [2, 5])], [_t("y", "FP32", [2])])
    signature = resolve_signature(config, model, SOURCE)
    assert signature.inputs == (TensorSpec("x", "FP32", (2, 5)),)


def test_config_may_list_a_subset_of_outputs() -> None:
    model = _model([("x", "FP32", (3,))], [("a", "FP32", (1,)), ("b", "FP32", (1,))])
    config = _config(0, None, [_t("b", "FP32", [1])])
    signature = resolve_signature(config, model, SOURCE)
    assert signature.inputs == model.inputs
    assert signature.outputs == (TensorSpec("b", "FP32", (1,)),)


def test_datatype_contradiction() -> None:
    model = _model([("x", "FP32", (3,))], [("y", "FP32", (1,))])
    message = _mismatch(_config(0, [_t("x", "INT32", [3])]), model)
    assert "input 'x' is FP32 in the model but INT32 in the config" in message


def test_shape_contradiction() -> None:
    model = _model([("x", "FP32", (3,))], [("y", "FP32", (1,))])
    message = _mismatch(_config(0, None, [_t("y", "FP32", [2])]), model)
    assert "output 'y' has shape [1] in the model but [2] in the config" in message


def test_rank_contradiction() -> None:
    model = _model([("x", "FP32", (-1, 3))], [("y", "FP32", (-1,))])
    message = _mismatch(_config(4, [_t("x", "FP32", [1, 3])]), model)
    assert "input 'x' has shape [3] in the model but [1, 3] in the config" in message


def test_unknown_name() -> None:
    model = _model([("x", "FP32", (3,)), ("w", "FP32", (3,))], [("y", "FP32", (1,))])
    message = _mismatch(_config(0, [_t("nope", "FP32", [3])]), model)
    assert "the config names input 'nope' but the model's inputs are ['w', 'x']" in message


def test_config_leaving_out_a_model_input() -> None:
    model = _model([("x", "FP32", (3,)), ("w", "FP32", (3,))], [("y", "FP32", (1,))])
    message = _mismatch(_config(0, [_t("x", "FP32", [3])]), model)
    assert "leaves out model inputs ['w']" in message


def test_model_without_batch_dimension_while_batching() -> None:
    model = _model([("x", "FP32", (3,))], [("y", "FP32", (-1,))])
    message = _mismatch(_config(8), model)
    assert "x has shape [3] with no variable batch dimension, but max_batch_size > 0" in message


def test_scalar_model_tensor_while_batching() -> None:
    model = _model([("x", "FP32", (-1,))], [("y", "FP32", ())])
    assert "y has shape [] with no variable batch dimension" in _mismatch(_config(2), model)


def test_fixed_first_dimension_equal_to_max_batch_size_is_not_a_batch_dimension() -> None:
    model = _model([("x", "FP32", (4, 3))], [("y", "FP32", (4,))])
    assert "no variable batch dimension" in _mismatch(_config(4), model)
