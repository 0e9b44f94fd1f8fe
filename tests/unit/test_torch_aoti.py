"""The AOTInductor adapter in-process: what it reads from a package, its instances, its shape rules.

One package (``aoti_package``, y = 2x for x [batch 2..8, 4]) serves every test here; the
refusals a server reports are in tests/integration/test_framework_faults.py.
"""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gateway.contract import LoadModel, Signature, TensorSpec
from runtimes.aoti_package import CompiledInput, Dimension, read_package
from runtimes.base import InvalidInput
from runtimes.torch_aoti import TorchAotiAdapter


def _spec(folder: Path, **kwargs: object) -> LoadModel:
    fields: dict[str, object] = {"key": "m:1", "model_name": "m", "path": str(folder), "platform": "torch_aoti",
                                 "max_batch_size": 8, "device": "cpu", "instances": 1,
                                 "parameters": {"intra_op_threads": 1}, "inputs": [("x", "FP32")],
                                 "outputs": [("y", "FP32")], **kwargs}
    return LoadModel(**fields)  # type: ignore[arg-type]


def test_the_package_tells_its_device_and_its_inputs(aoti_package: Path) -> None:
    info = read_package(aoti_package)
    assert info.device == "cpu"
    assert info.inputs == (CompiledInput("FP32", (Dimension(2, 8), Dimension(4, 4))),)


def test_instances_each_run_their_own_loader_concurrently(aoti_package: Path) -> None:
    adapter = TorchAotiAdapter(_spec(aoti_package.parent, instances=2))
    assert adapter.signature() == Signature((TensorSpec("x", "FP32", (-1, 4)),), ())

    def double(seed: int) -> bool:
        x = np.random.default_rng(seed).standard_normal((1 + seed % 8, 4)).astype(np.float32)
        return bool(np.array_equal(adapter.execute({"x": x}, ["y"])["y"], 2 * x))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(double, range(200)))


def test_without_a_batch_dimension_the_compiled_range_is_every_dimension_s_rule(aoti_package: Path) -> None:
    adapter = TorchAotiAdapter(_spec(aoti_package.parent, max_batch_size=0))
    x = np.ones((3, 4), np.float32)
    assert np.array_equal(adapter.execute({"x": x}, ["y"])["y"], 2 * x)
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[1, 4\] does not fit the package's \[2..8, 4\]"):
        adapter.execute({"x": np.ones((1, 4), np.float32)}, ["y"])


def test_a_package_without_its_input_checks_serves_the_config(aoti_package: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "model.pt2"
    with zipfile.ZipFile(aoti_package) as source, zipfile.ZipFile(stripped, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith(".wrapper.cpp"):
                target.writestr(info, source.read(info))
    adapter = TorchAotiAdapter(_spec(tmp_path))
    assert adapter.signature() is None
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(adapter.execute({"x": x}, ["y"])["y"], 2 * x)
