"""The 14 protocol datatypes, their numpy dtypes, and the error classes' status codes."""

import ml_dtypes
import numpy as np
import pytest

from gateway.protocol.datatypes import DATATYPES, datatype_of, element_size, numpy_dtype
from gateway.protocol.errors import (
    Conflict,
    InferenceFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TensorGateError,
    Unavailable,
    Unsupported,
)

EXPECTED = {
    "BOOL": (np.bool_, 1),
    "UINT8": (np.uint8, 1),
    "UINT16": (np.uint16, 2),
    "UINT32": (np.uint32, 4),
    "UINT64": (np.uint64, 8),
    "INT8": (np.int8, 1),
    "INT16": (np.int16, 2),
    "INT32": (np.int32, 4),
    "INT64": (np.int64, 8),
    "FP16": (np.float16, 2),
    "FP32": (np.float32, 4),
    "FP64": (np.float64, 8),
    "BF16": (ml_dtypes.bfloat16, 2),
    "BYTES": (np.object_, 0),
}


def test_there_are_exactly_the_14_protocol_datatypes() -> None:
    assert set(DATATYPES) == set(EXPECTED)
    assert len(DATATYPES) == 14


@pytest.mark.parametrize("datatype", list(EXPECTED))
def test_numpy_dtype_of_each_datatype(datatype: str) -> None:
    assert numpy_dtype(datatype) == np.dtype(EXPECTED[datatype][0])


@pytest.mark.parametrize("datatype", list(EXPECTED))
def test_datatype_of_maps_each_numpy_dtype_back(datatype: str) -> None:
    assert datatype_of(numpy_dtype(datatype)) == datatype


@pytest.mark.parametrize("datatype", list(EXPECTED))
def test_element_size_of_each_datatype(datatype: str) -> None:
    assert element_size(datatype) == EXPECTED[datatype][1]


def test_bf16_is_the_ml_dtypes_bfloat16() -> None:
    assert numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert numpy_dtype("BF16").itemsize == 2


@pytest.mark.parametrize("dtype", [np.dtype("S5"), np.dtype("U3"), np.dtype(object)])
def test_string_dtypes_map_to_bytes(dtype: np.dtype) -> None:
    assert datatype_of(dtype) == "BYTES"


def test_big_endian_dtype_maps_to_its_datatype() -> None:
    assert datatype_of(np.dtype(">f4")) == "FP32"
    assert datatype_of(np.dtype(">i8")) == "INT64"


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", "STRING", ""])
def test_unknown_datatype_is_invalid_request(datatype: str) -> None:
    with pytest.raises(InvalidRequest, match="unknown datatype"):
        numpy_dtype(datatype)


def test_unknown_datatype_message_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        numpy_dtype("FLOAT")
    assert "FP32" in info.value.message and "BYTES" in info.value.message


def test_element_size_of_unknown_datatype_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        element_size("FLOAT")


@pytest.mark.parametrize("dtype", [np.dtype(np.complex64), np.dtype("datetime64[s]")])
def test_numpy_dtype_without_datatype_is_invalid_request(dtype: np.dtype) -> None:
    with pytest.raises(InvalidRequest, match="no protocol datatype"):
        datatype_of(dtype)


@pytest.mark.parametrize(
    ("error", "http_status", "grpc_code"),
    [
        (TensorGateError, 500, "INTERNAL"),
        (InvalidRequest, 400, "INVALID_ARGUMENT"),
        (NotFound, 404, "NOT_FOUND"),
        (Conflict, 409, "FAILED_PRECONDITION"),
        (PayloadTooLarge, 413, "RESOURCE_EXHAUSTED"),
        (Unsupported, 501, "UNIMPLEMENTED"),
        (Unavailable, 503, "UNAVAILABLE"),
        (InferenceFailed, 500, "INTERNAL"),
    ],
)
def test_error_class_status_pair(error: type[TensorGateError], http_status: int, grpc_code: str) -> None:
    instance = error("boom")
    assert instance.http_status == http_status
    assert instance.grpc_code == grpc_code


@pytest.mark.parametrize("error", [InvalidRequest, NotFound, Conflict, PayloadTooLarge, Unsupported, Unavailable,
                                   InferenceFailed])
def test_every_error_is_a_tensorgate_error_carrying_its_message(error: type[TensorGateError]) -> None:
    instance = error("what went wrong")
    assert isinstance(instance, TensorGateError)
    assert instance.message == "what went wrong"
    assert str(instance) == "what went wrong"


def test_grpc_codes_name_real_grpc_status_codes() -> None:
    import grpc

    for error in (TensorGateError, InvalidRequest, NotFound, Conflict, PayloadTooLarge, Unsupported, Unavailable,
                  InferenceFailed):
        assert isinstance(getattr(grpc.StatusCode, error.grpc_code), grpc.StatusCode)
