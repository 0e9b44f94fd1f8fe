"""``gather_into``: a batch gathered once, into memory from an allocator (pinned memory on a GPU).

The allocator here is plain numpy memory that the test keeps track of, so that it can check where
every gathered byte went; on a GPU the torch adapters pass torch's pinned allocator instead, which
``benchmarks/gpu_check.py`` checks on the device (its "inputs staged" column).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from runtimes.padding import gather_padded
from runtimes.staging import gather_into


class Blocks:
    """An allocator that remembers each block it handed out."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []

    def __call__(self, nbytes: int) -> np.ndarray:
        block = np.full(nbytes, 0xAB, dtype=np.uint8)  # not zeros: a row left unwritten shows
        self.blocks.append(block)
        return block


def _request(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.random((rows, 3, 2), dtype=np.float32),
        "mask": rng.random((rows, 4)) > 0.5,
        "h": rng.random((rows, 5)).astype(ml_dtypes.bfloat16),
        "ids": rng.integers(-(2**62), 2**62, (rows,), dtype=np.int64),
    }


def test_each_input_is_written_once_into_its_own_block_in_request_order() -> None:
    batch = [_request(2, 0), _request(1, 1), _request(3, 2)]
    blocks = Blocks()
    gathered = gather_into(batch, blocks)
    assert len(blocks.blocks) == 4  # one block per input, exactly its size
    for (name, array), block in zip(gathered.items(), blocks.blocks, strict=True):
        expected = np.concatenate([inputs[name] for inputs in batch])
        assert array.dtype == expected.dtype and array.shape == expected.shape
        assert array.tobytes() == expected.tobytes()
        assert block.nbytes == expected.nbytes and np.shares_memory(array, block)
        assert array.flags.c_contiguous and array.flags.writeable  # what torch.from_numpy takes as it is


def test_a_lone_request_is_copied_into_the_block_not_passed_through() -> None:
    request = _request(4, 3)
    for array in request.values():
        array.flags.writeable = False  # as a view over the sender's arena is
    blocks = Blocks()
    gathered = gather_into([request], blocks)
    for name, array in gathered.items():
        assert array is not request[name] and not np.shares_memory(array, request[name])
        assert np.array_equal(array.view(np.uint8), request[name].view(np.uint8))
    assert len(blocks.blocks) == 4


def test_a_scalar_of_a_model_that_does_not_batch_gets_a_block_of_its_own_size() -> None:
    blocks = Blocks()
    gathered = gather_into([{"t": np.array(2.5, dtype=np.float64)}], blocks)
    assert gathered["t"].shape == () and gathered["t"] == 2.5
    assert [block.nbytes for block in blocks.blocks] == [8]


def test_bytes_inputs_are_gathered_with_numpy_and_take_no_block() -> None:
    batch = [{"s": np.array([[b"a"], [b"bc"]], dtype=object)}, {"s": np.array([[b"d"]], dtype=object)}]
    blocks = Blocks()
    gathered = gather_into(batch, blocks)
    assert gathered["s"][:, 0].tolist() == [b"a", b"bc", b"d"]
    assert blocks.blocks == []


def test_padding_rows_are_gathered_into_the_same_block() -> None:
    batch = [{"x": np.ones((2, 3), np.float32)}, {"x": np.full((1, 3), 2, np.float32)}]
    blocks = Blocks()
    inputs, rows, size = gather_padded(batch, (4, 8), lambda parts: gather_into(parts, blocks))
    assert (rows, size) == (3, 4)
    assert inputs["x"].tolist() == [[1, 1, 1], [1, 1, 1], [2, 2, 2], [0, 0, 0]]
    assert len(blocks.blocks) == 1 and np.shares_memory(inputs["x"], blocks.blocks[0])
