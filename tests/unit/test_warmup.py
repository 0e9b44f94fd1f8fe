"""Warm-up samples: config.yaml's ``warmup`` (gateway/repository/config.py) and the tensors a worker builds
from a sample (runtimes/warmup.py): zeros, seeded random values, raw files in Triton's layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.contract import WarmupInput, WarmupSample
from gateway.repository.config import ConfigError, load_config
from runtimes.warmup import WarmupDataError, sample_arrays

BASE = "platform: onnx\nmax_batch_size: 4\n"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_config_yaml_warmup(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, BASE + "warmup:\n  - {name: w, batch_size: 4, count: 3, inputs: "
                                               "{x: {random: true}, n: {zero: true, shape: [1]}, "
                                               "s: {file: s.bin, datatype: BYTES}}}\n"), "m")
    [sample] = config.warmup
    assert (sample.name, sample.batch_size, sample.count) == ("w", 4, 3)
    assert {k: v.source for k, v in sample.inputs.items()} == {"x": "random", "n": "zero", "s": "file"}
    assert load_config(_config(tmp_path, BASE), "m").warmup == []


@pytest.mark.parametrize(("text", "fragment"), [
    ("warmup: [{inputs: {x: {}}}]", "exactly one of zero"),
    ("warmup: [{inputs: {x: {zero: true, random: true}}}]", "exactly one of zero"),
    ("warmup: [{inputs: {x: {file: ../../etc/passwd}}}]", "not a path"),
    ("warmup: [{inputs: {x: {zero: true, shape: [-1]}}}]", "positive"),
    ("warmup: [{inputs: {x: {zero: true, datatype: FLOAT}}}]", "'FLOAT' is not one of"),
    ("warmup: [{inputs: {}}]", "warmup.0.inputs"),
    ("warmup: [{batch_size: 5, inputs: {x: {zero: true}}}]", "over max_batch_size (4)"),
    ("warmup: [{inputs: {x: {zero: true}}, bogus: 1}]", "bogus"),
])
def test_config_yaml_warmup_errors_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, BASE + text + "\n"), "m")
    assert fragment in str(info.value) and str(tmp_path / "m" / "config.yaml") in str(info.value)


def test_unbatched_models_warm_up_one_row(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="over the 1 row of a model that does not batch"):
        load_config(_config(tmp_path, "platform: onnx\nwarmup: [{batch_size: 2, inputs: {x: {zero: true}}}]\n"), "m")


def test_zero_and_random_tensors_have_the_sample_shape_and_type() -> None:
    sample = WarmupSample("w", 3, 1, (WarmupInput("x", "FP32", (2, 2), "random"),
                                      WarmupInput("n", "INT64", (1,), "zero"),
                                      WarmupInput("b", "BOOL", (4,), "random"),
                                      WarmupInput("s", "BYTES", (2,), "random"),
                                      WarmupInput("z", "BYTES", (1,), "zero")))
    arrays = sample_arrays(sample, batched=True)
    assert {k: (v.dtype.str, v.shape) for k, v in arrays.items()} == {
        "x": ("<f4", (3, 2, 2)), "n": ("<i8", (3, 1)), "b": ("|b1", (3, 4)), "s": ("|O", (3, 2)), "z": ("|O", (3, 1))}
    assert not arrays["n"].any() and arrays["z"].tolist() == [[b""]] * 3
    assert np.array_equal(arrays["x"], sample_arrays(sample, batched=True)["x"])  # seeded: the same every time
    assert sample_arrays(sample, batched=False)["x"].shape == (2, 2)


def test_file_tensors_in_tritons_layout(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(values.tobytes())
    (tmp_path / "s.bin").write_bytes(b"".join(struct.pack("<I", len(t)) + t for t in (b"ab", b"", b"xyz", b"q")))
    sample = WarmupSample("w", 2, 1, (WarmupInput("x", "FP32", (3,), "file", str(tmp_path / "x.bin")),
                                      WarmupInput("s", "BYTES", (2,), "file", str(tmp_path / "s.bin"))))
    arrays = sample_arrays(sample, batched=True)
    assert arrays["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert arrays["s"].tolist() == [[b"ab", b""], [b"xyz", b"q"]]


@pytest.mark.parametrize(("datatype", "content", "fragment"), [
    ("FP32", b"\0" * 10, "has 10 bytes; FP32 [1, 3] needs 12"),
    ("BYTES", struct.pack("<I", 9) + b"short", "length-prefixed BYTES"),
    ("BYTES", struct.pack("<I", 1) + b"a", "does not hold 3"),
])
def test_a_file_of_the_wrong_size_is_an_error_naming_it(tmp_path: Path, datatype: str, content: bytes,
                                                        fragment: str) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    sample = WarmupSample("w", 1, 1, (WarmupInput("x", datatype, (3,), "file", str(path)),))
    with pytest.raises(WarmupDataError, match="input 'x'") as info:
        sample_arrays(sample, batched=True)
    assert fragment in str(info.value) and str(path) in str(info.value)
    with pytest.raises(WarmupDataError, match="cannot read"):
        sample_arrays(WarmupSample("w", 1, 1, (WarmupInput("x", "FP32", (3,), "file", str(tmp_path / "no")),)),
                      batched=True)
