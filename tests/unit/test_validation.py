"""validate_request: a decoded request checked against the model's served signature."""

import numpy as np
import pytest

from gateway.contract import Signature, TensorSpec
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.types import InferInput, InferRequest, RequestedOutput
from gateway.validation import validate_request

SIGNATURE = Signature(
    inputs=(TensorSpec("image", "FP32", (3, -1)), TensorSpec("mask", "BOOL", (3,))),
    outputs=(TensorSpec("scores", "FP32", (10,)), TensorSpec("labels", "BYTES", (10,))),
)


def _input(name: str, datatype: str, shape: tuple[int, ...]) -> InferInput:
    dtype = {"FP32": np.float32, "BOOL": np.bool_, "INT32": np.int32}[datatype]
    return InferInput(name, datatype, np.zeros(shape, dtype=dtype))


def _request(*inputs: InferInput, outputs: list[str] | None = None) -> InferRequest:
    requested = None if outputs is None else [RequestedOutput(name) for name in outputs]
    return InferRequest("m", None, list(inputs), outputs=requested)


def _valid_inputs(batch: int = 2) -> tuple[InferInput, InferInput]:
    return _input("image", "FP32", (batch, 3, 5)), _input("mask", "BOOL", (batch, 3))


def _invalid(request: InferRequest, max_batch_size: int = 8, signature: Signature = SIGNATURE) -> str:
    with pytest.raises(InvalidRequest) as info:
        validate_request(request, signature, max_batch_size, "m")
    return info.value.message


def test_valid_request_returns_inputs_outputs_and_batch_size() -> None:
    image, mask = _valid_inputs(batch=3)
    inputs, outputs, batch = validate_request(_request(image, mask), SIGNATURE, 8, "m")
    assert inputs == {"image": image.data, "mask": mask.data}
    assert outputs == ["scores", "labels"]
    assert batch == 3


def test_inputs_may_come_in_any_order() -> None:
    image, mask = _valid_inputs()
    inputs, _, _ = validate_request(_request(mask, image), SIGNATURE, 8, "m")
    assert set(inputs) == {"image", "mask"}


def test_requested_outputs_are_returned_in_request_order() -> None:
    _, outputs, _ = validate_request(_request(*_valid_inputs(), outputs=["labels", "scores"]), SIGNATURE, 8, "m")
    assert outputs == ["labels", "scores"]


def test_requested_output_subset() -> None:
    _, outputs, _ = validate_request(_request(*_valid_inputs(), outputs=["labels"]), SIGNATURE, 8, "m")
    assert outputs == ["labels"]


def test_unknown_input_lists_the_models_inputs() -> None:
    message = _invalid(_request(*_valid_inputs(), _input("extra", "FP32", (2,))))
    assert message == "model 'm' has no input 'extra' (its inputs: image, mask)"


def test_duplicate_input() -> None:
    image, mask = _valid_inputs()
    assert _invalid(_request(image, mask, image)) == "input 'image' is given more than once"


def test_wrong_datatype() -> None:
    message = _invalid(_request(_input("image", "FP32", (2, 3, 5)), _input("mask", "INT32", (2, 3))))
    assert message == "input 'mask': datatype INT32 does not match the model's BOOL"


def test_wrong_rank() -> None:
    message = _invalid(_request(_input("image", "FP32", (2, 3)), _input("mask", "BOOL", (2, 3))))
    assert message == "input 'image': shape [2, 3] should be [batch, 3, -1]"


def test_wrong_fixed_dimension() -> None:
    message = _invalid(_request(_input("image", "FP32", (2, 4, 5)), _input("mask", "BOOL", (2, 3))))
    assert message == "input 'image': shape [2, 4, 5] does not match the model's [batch, 3, -1]"


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_variable_dimension_accepts_any_size(size: int) -> None:
    request = _request(_input("image", "FP32", (1, 3, size)), _input("mask", "BOOL", (1, 3)))
    _, _, batch = validate_request(request, SIGNATURE, 8, "m")
    assert batch == 1


def test_batch_larger_than_max_batch_size() -> None:
    message = _invalid(_request(*_valid_inputs(batch=9)))
    assert message == "input 'image': batch size 9 exceeds the model's max_batch_size 8"


def test_batch_equal_to_max_batch_size_is_accepted() -> None:
    _, _, batch = validate_request(_request(*_valid_inputs(batch=8)), SIGNATURE, 8, "m")
    assert batch == 8


def test_batch_zero() -> None:
    assert _invalid(_request(*_valid_inputs(batch=0))) == "input 'image': the batch dimension must be at least 1"


def test_inputs_with_different_batch_sizes() -> None:
    message = _invalid(_request(_input("image", "FP32", (2, 3, 5)), _input("mask", "BOOL", (4, 3))))
    assert message == "inputs disagree on the batch size: [2, 4]"


def test_missing_input() -> None:
    image, _ = _valid_inputs()
    assert _invalid(_request(image)) == "model 'm' needs input(s) mask, not given"


def test_unknown_requested_output() -> None:
    message = _invalid(_request(*_valid_inputs(), outputs=["scores", "boxes"]))
    assert message == "model 'm' has no output 'boxes' (its outputs: scores, labels)"


def test_duplicate_requested_output() -> None:
    assert _invalid(_request(*_valid_inputs(), outputs=["scores", "scores"])) == "an output is requested more than once"


UNBATCHED = Signature(inputs=(TensorSpec("x", "FP32", (2, -1)),), outputs=(TensorSpec("y", "FP32", (2,)),))


def test_unbatched_model_takes_the_shape_as_is_and_reports_batch_one() -> None:
    inputs, outputs, batch = validate_request(_request(_input("x", "FP32", (2, 7))), UNBATCHED, 0, "m")
    assert inputs["x"].shape == (2, 7)
    assert outputs == ["y"]
    assert batch == 1


def test_unbatched_model_has_no_batch_dimension() -> None:
    message = _invalid(_request(_input("x", "FP32", (1, 2, 7))), max_batch_size=0, signature=UNBATCHED)
    assert message == "input 'x': shape [1, 2, 7] does not match the model's [2, -1]"


def test_unbatched_model_wrong_fixed_dimension() -> None:
    message = _invalid(_request(_input("x", "FP32", (3, 7))), max_batch_size=0, signature=UNBATCHED)
    assert message == "input 'x': shape [3, 7] does not match the model's [2, -1]"


def test_unbatched_model_ignores_large_leading_dimension() -> None:
    signature = Signature(inputs=(TensorSpec("x", "FP32", (-1,)),), outputs=(TensorSpec("y", "FP32", (-1,)),))
    _, _, batch = validate_request(_request(_input("x", "FP32", (500,))), signature, 0, "m")
    assert batch == 1
