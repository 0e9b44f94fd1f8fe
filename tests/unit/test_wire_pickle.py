"""Messages on the data connection pickle by their fields (gateway/wire_pickle.py), and come back equal."""

import dataclasses
import pickle

import numpy as np
import pytest

from gateway import contract
from gateway.contract import (
    BatchTrace,
    Cancel,
    Failed,
    Fence,
    Outcome,
    Release,
    RequestTrace,
    Results,
    StatsQuery,
    Submit,
    TensorRef,
)
from gateway.wire_pickle import by_fields
from gateway.workers.ipc import Envelope

REF = TensorRef(4096, 64, "<f4", (1, 16))
TRACE = RequestTrace(10, 2, BatchTrace(11, 12, 13, 2, 3, ((1, 2, 1), (3, 4, 0))))

MESSAGES = [
    REF,
    TRACE,
    Submit(7, "m:1:0", {"a": REF, "b": np.arange(3, dtype=np.int64)}, ["y"], 1, 2, 0.5, 99, (1, 2, 1)),
    Submit(8, "m:1:0", {"a": REF}, ["y"], 1, None, None, 100),
    Cancel(7),
    Release([1, 2, 3]),
    Failed("m:1:0", 5),
    Fence(3),
    StatsQuery(["m:1:0"]),
    Outcome(7, {"y": REF}, trace=TRACE),
    Outcome(8, error_kind="Unavailable", error="cancelled"),
    Results([Outcome(1, {"y": REF}), Outcome(2, error_kind="InvalidRequest", error="bad")]),
    Envelope(3, Results([Outcome(1, {"y": REF})]), reply=True),
]


def _equal(got: object, want: object) -> bool:
    """Dataclass equality, with numpy arrays compared by value."""
    if dataclasses.is_dataclass(want) and not isinstance(want, type):
        return type(got) is type(want) and all(
            _equal(getattr(got, f.name), getattr(want, f.name)) for f in dataclasses.fields(want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_equal(got[k], want[k]) for k in want)
    if isinstance(want, list | tuple):
        return type(got) is type(want) and len(got) == len(want) and all(map(_equal, got, want))
    if isinstance(want, np.ndarray):
        return isinstance(got, np.ndarray) and got.dtype == want.dtype and np.array_equal(got, want)
    return got == want


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    assert _equal(pickle.loads(pickle.dumps(message, protocol=5)), message)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_pickled_as_class_and_field_values(message: object) -> None:
    """No ``__getstate__`` walk: the reduction is the class and the values in field order."""
    reduced = message.__reduce__()
    assert isinstance(reduced, tuple)
    cls, values = reduced
    assert cls is type(message)
    assert values == tuple(getattr(message, f.name) for f in dataclasses.fields(message))  # type: ignore[arg-type]


def test_every_data_message_is_decorated() -> None:
    """A data-connection message added later without ``@by_fields`` would fall back to the slow walk."""
    data = [Submit, Cancel, Release, Failed, Fence, StatsQuery, Outcome, Results, TensorRef, RequestTrace, BatchTrace]
    for cls in data:
        assert "__reduce__" in vars(cls), cls.__name__
        assert getattr(contract, cls.__name__) is cls


def test_fields_outside_init_are_refused() -> None:
    @dataclasses.dataclass
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="__init__ argument"):
        by_fields(Derived)
