"""``pad_batches_to``: the list, the size a batch runs at, the padded gather and the sliced outputs."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes.padding import gather_padded, padded_size, padding_sizes, unpadded


def test_the_list_is_sorted_and_deduplicated() -> None:
    assert padding_sizes(" 8,4, 1,4", 16) == (1, 4, 8)
    assert padding_sizes(4, 16) == (4,)


@pytest.mark.parametrize(("value", "max_batch_size", "message"), [
    ("4,x", 8, "'4,x' is not a comma-separated list of batch sizes"),
    ("", 8, "'' is not a comma-separated list"),
    ("0,4", 8, "each size must be between 1 and max_batch_size (8)"),
    ("4,16", 8, "each size must be between 1 and max_batch_size (8)"),
    ("4", 0, "needs a model that batches"),
])
def test_a_bad_list_is_refused_with_what_is_wrong(value: str, max_batch_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        padding_sizes(value, max_batch_size)


@pytest.mark.parametrize(("rows", "size"), [(1, 1), (2, 4), (4, 4), (5, 8), (8, 8), (9, 9)])
def test_a_batch_runs_at_the_next_listed_size_or_as_it_is_above_them(rows: int, size: int) -> None:
    assert padded_size(rows, (1, 4, 8)) == size


def test_the_gather_appends_zero_rows_of_each_inputs_kind_and_the_outputs_lose_them() -> None:
    batch = [{"x": np.ones((2, 3), np.float32), "s": np.array([[b"a"], [b"b"]], dtype=object)},
             {"x": np.full((1, 3), 2, np.float32), "s": np.array([[b"c"]], dtype=object)}]
    inputs, rows, size = gather_padded(batch, (4, 8))
    assert (rows, size) == (3, 4)
    assert inputs["x"].tolist() == [[1, 1, 1], [1, 1, 1], [2, 2, 2], [0, 0, 0]]
    assert inputs["s"][:, 0].tolist() == [b"a", b"b", b"c", b""]
    outputs = unpadded({"y": inputs["x"] * 2, "other": np.zeros(7)}, rows, size)
    assert outputs["y"].tolist() == [[2, 2, 2], [2, 2, 2], [4, 4, 4]]
    assert outputs["other"].shape == (7,)  # not the batch's length: left for the scheduler to refuse


def test_a_batch_that_fits_no_listed_size_is_gathered_as_usual() -> None:
    batch = [{"x": np.ones((5, 2), np.float32)}]
    inputs, rows, size = gather_padded(batch, (2, 4))
    assert (rows, size) == (5, 5) and inputs["x"].shape == (5, 2)
