"""Raw tensor bytes <-> numpy arrays (gateway/protocol/raw.py)."""

import struct

import ml_dtypes
import numpy as np
import pytest

from gateway.protocol.datatypes import numpy_dtype
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.raw import array_from_raw, array_to_raw, bytes_tensor_to_raw

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -1, 2]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -1, 2]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 2]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -1, 2]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300], [1, 2, 3]], dtype=np.float64),
    "BF16": np.array([[0.5, -1.25, 3.0], [1, 2, 256]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"abc", b"", b"\xff\xfe\x00"], [b"x", "é".encode(), b"end"]], dtype=object),
}
FIXED = [d for d in SAMPLES if d != "BYTES"]



def _to_bytes(raw: bytes | memoryview) -> bytes:
    return raw if isinstance(raw, bytes) else raw.tobytes()


@pytest.mark.parametrize(
    "datatype", list(SAMPLES)
)
def test_round_trip_through_raw(datatype: str) -> None:
    array = SAMPLES[datatype]
    raw = _to_bytes(array_to_raw(array))
    back = array_from_raw(raw, datatype, array.shape, "x")
    assert back.shape == array.shape
    assert back.dtype == numpy_dtype(datatype)
    assert np.array_equal(back, array)


@pytest.mark.parametrize("datatype", FIXED)
def test_from_raw_reads_little_endian_row_major(datatype: str) -> None:
    array = SAMPLES[datatype]
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")
    back = array_from_raw(raw, datatype, array.shape, "x")
    assert np.array_equal(back, array)


@pytest.mark.parametrize("datatype", [d for d in FIXED if d != "BF16"])
def test_to_raw_writes_little_endian_row_major(datatype: str) -> None:
    array = SAMPLES[datatype]
    assert _to_bytes(array_to_raw(array)) == array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")


def test_bf16_from_raw_decodes_known_bits() -> None:
    # 0x3f80 is 1.0 and 0x4000 is 2.0 in bfloat16, stored little-endian.
    back = array_from_raw(b"\x80\x3f\x00\x40", "BF16", (2,), "x")
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.astype(np.float32).tolist() == [1.0, 2.0]


def test_bf16_to_raw_gives_two_bytes_per_element() -> None:
    array = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    assert _to_bytes(array_to_raw(array)) == b"\x80\x3f\x00\x40"


def test_bool_is_one_byte_zero_or_one() -> None:
    assert _to_bytes(array_to_raw(np.array([True, False, True]))) == b"\x01\x00\x01"


def test_big_endian_array_is_written_little_endian() -> None:
    array = np.array([1, 256], dtype=">i4")
    assert _to_bytes(array_to_raw(array)) == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_non_contiguous_array_is_written_row_major() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    raw = _to_bytes(array_to_raw(array))
    assert np.array_equal(np.frombuffer(raw, dtype="<i4").reshape(4, 3), array)


def test_scalar_shape_round_trip() -> None:
    back = array_from_raw(struct.pack("<f", 2.5), "FP32", (), "x")
    assert back.shape == ()
    assert float(back) == 2.5


def test_empty_tensor_round_trip() -> None:
    back = array_from_raw(b"", "FP32", (0, 3), "x")
    assert back.shape == (0, 3)


def test_bytes_elements_are_length_prefixed() -> None:
    array = np.array([b"ab", b"", b"\xff"], dtype=object)
    assert bytes_tensor_to_raw(array) == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00\xff"
    assert array_to_raw(array) == bytes_tensor_to_raw(array)


def test_bytes_tensor_from_str_elements_is_utf8() -> None:
    assert bytes_tensor_to_raw(np.array(["é"], dtype=object)) == b"\x02\x00\x00\x00\xc3\xa9"


def test_bytes_from_raw_keeps_non_utf8_and_empty_elements() -> None:
    raw = b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xff\xfe" + b"\x01\x00\x00\x00\x00"
    back = array_from_raw(raw, "BYTES", (3,), "x")
    assert back.dtype == np.dtype(object)
    assert back.tolist() == [b"", b"\xff\xfe", b"\x00"]
    assert all(isinstance(e, bytes) for e in back)


def test_bytes_from_raw_reshapes_to_the_shape() -> None:
    back = array_from_raw(bytes_tensor_to_raw(SAMPLES["BYTES"]), "BYTES", (2, 3), "x")
    assert back.shape == (2, 3)
    assert back[1, 1] == "é".encode()


@pytest.mark.parametrize("datatype", FIXED)
def test_size_mismatch_names_the_input(datatype: str) -> None:
    size = numpy_dtype(datatype).itemsize
    with pytest.raises(InvalidRequest, match="input 'my_input'") as info:
        array_from_raw(b"\x00" * (size * 3 + 1), datatype, (3,), "my_input")
    assert f"{size * 3} bytes expected" in info.value.message


def test_too_few_bytes_is_a_size_mismatch() -> None:
    with pytest.raises(InvalidRequest, match=r"input 'a': 4 bytes .* \[2, 2\]"):
        array_from_raw(b"\x00" * 4, "FP32", (2, 2), "a")


def test_bytes_data_ending_before_a_length_prefix() -> None:
    raw = b"\x01\x00\x00\x00a" + b"\x01\x00"
    with pytest.raises(InvalidRequest, match=r"input 'words': BYTES data ends after 1 of 3 elements"):
        array_from_raw(raw, "BYTES", (3,), "words")


def test_bytes_element_running_past_the_end() -> None:
    raw = b"\x01\x00\x00\x00a" + b"\x05\x00\x00\x00abc"
    with pytest.raises(InvalidRequest, match=r"input 'words': BYTES element 1 runs past the end"):
        array_from_raw(raw, "BYTES", (2,), "words")


def test_bytes_leftover_after_all_elements() -> None:
    raw = b"\x01\x00\x00\x00a" + b"xyz"
    with pytest.raises(InvalidRequest, match=r"input 'words': 3 bytes left over after 1 BYTES elements"):
        array_from_raw(raw, "BYTES", (1,), "words")


def test_unknown_datatype_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="unknown datatype"):
        array_from_raw(b"", "FLOAT", (0,), "x")


@pytest.mark.parametrize("datatype", FIXED)
def test_from_raw_does_not_copy(datatype: str) -> None:
    source = bytearray(SAMPLES[datatype].tobytes())
    back = array_from_raw(source, datatype, SAMPLES[datatype].shape, "x")
    assert np.shares_memory(back, np.frombuffer(source, dtype=np.uint8))


def test_from_raw_array_is_a_view_of_the_buffer() -> None:
    source = bytearray(struct.pack("<4i", 1, 2, 3, 4))
    back = array_from_raw(source, "INT32", (2, 2), "x")
    source[0:4] = struct.pack("<i", 99)
    assert back[0, 0] == 99


def test_from_raw_of_a_memoryview_slice_does_not_copy() -> None:
    body = bytearray(b"HEADER" + struct.pack("<2f", 1.0, 2.0))
    back = array_from_raw(memoryview(body)[6:], "FP32", (2,), "x")
    assert np.shares_memory(back, np.frombuffer(body, dtype=np.uint8))
    assert back.tolist() == [1.0, 2.0]


def test_to_raw_of_a_contiguous_array_is_a_view() -> None:
    array = np.arange(6, dtype=np.float32)
    raw = array_to_raw(array)
    assert isinstance(raw, memoryview)
    assert np.shares_memory(np.frombuffer(raw, dtype=np.uint8), array)
    assert raw.nbytes == array.nbytes


def test_to_raw_view_sees_later_writes() -> None:
    array = np.zeros(2, dtype=np.int16)
    raw = array_to_raw(array)
    array[0] = 0x0102
    assert bytes(raw[:2]) == b"\x02\x01"
