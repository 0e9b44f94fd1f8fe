"""Small ONNX models built on the fly for the integration tests, and repositories of them.

Every model is made with ``onnx.helper`` from seeded or constant weights: nothing is
downloaded and every build is identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import load_script

OPSET = 17

#: The identity model's tensors: (suffix, protocol datatype, ONNX element type).
IDENTITY_TENSORS = [
    ("fp32", "FP32", TensorProto.FLOAT),
    ("int64", "INT64", TensorProto.INT64),
    ("bytes", "BYTES", TensorProto.STRING),
    ("bool", "BOOL", TensorProto.BOOL),
    ("fp16", "FP16", TensorProto.FLOAT16),
]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def _write_config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)


def identity_model(repo: Path) -> None:
    """``identity``: five inputs of five datatypes, each [batch, -1], echoed to five outputs."""
    inputs = [helper.make_tensor_value_info(f"in_{s}", t, ["batch", "n"]) for s, _, t in IDENTITY_TENSORS]
    outputs = [helper.make_tensor_value_info(f"out_{s}", t, ["batch", "n"]) for s, _, t in IDENTITY_TENSORS]
    nodes = [helper.make_node("Identity", [f"in_{s}"], [f"out_{s}"]) for s, _, _ in IDENTITY_TENSORS]
    _save(helper.make_graph(nodes, "identity", inputs, outputs), repo / "identity" / "1" / "model.onnx")
    _write_config(repo / "identity", "platform: onnx\nmax_batch_size: 8\n")


def flat_identity_model(repo: Path, name: str = "flat_identity") -> None:
    """An unbatched FP32 identity of any length: for payload-size tests."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    _write_config(repo / name, "platform: onnx\nmax_batch_size: 0\n"
                  "inputs: [{name: x, datatype: FP32, shape: [-1]}]\n"
                  "outputs: [{name: y, datatype: FP32, shape: [-1]}]\n")


def versioned_model(repo: Path) -> None:
    """``versioned``: version v adds v to its FP32 input, so a reply shows which version ran."""
    for version in (1, 2, 3):
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "offset"], ["y"])], "versioned",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
            [numpy_helper.from_array(np.full(4, version, dtype=np.float32), "offset")],
        )
        _save(graph, repo / "versioned" / str(version) / "model.onnx")
    _write_config(repo / "versioned",
                  "platform: onnx\nmax_batch_size: 4\nversion_policy: {specific: {versions: [1, 2]}}\n")


def _matmul_loop_body() -> onnx.GraphProto:
    """A Loop body that multiplies a 64x64 state by a constant matrix: a fixed amount of work per turn."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "w"], ["product"]),
         helper.make_node("Tanh", ["product"], ["state_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [64, 64])],
    )


def _loop_weights() -> onnx.TensorProto:
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w")


def slow_model(repo: Path, name: str = "slow", config: str = "instances: {count: 2}\n") -> None:
    """``slow``: repeats a 64x64 matrix product ``iterations`` times, to hold a batch in flight."""
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["iterations"], ["trip"]),
         helper.make_node("Loop", ["trip", "", "x"], ["y"], body=_matmul_loop_body())],
        "slow",
        [helper.make_tensor_value_info("iterations", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [_loop_weights()],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    _write_config(repo / name, f"platform: onnx\nmax_batch_size: 0\nparameters: {{intra_op_threads: 1}}\n{config}")


def delay_model(repo: Path, name: str = "delay", turns: int = 1300, config: str = "max_batch_size: 16\n") -> None:
    """``delay``: y = 2x for x of shape [batch, 4], after a fixed ``turns`` of matrix work (about 4 µs each
    here), whatever the batch size: a model whose cost is per batch, so batching pays."""
    fixed_work = helper.make_node("Loop", ["turns", "", "seed"], ["state"], body=_matmul_loop_body())
    graph = helper.make_graph(
        [fixed_work,
         helper.make_node("ReduceSum", ["state"], ["total"], keepdims=0),
         helper.make_node("Mul", ["total", "zero"], ["nothing"]),
         helper.make_node("Mul", ["x", "two"], ["doubled"]),
         helper.make_node("Add", ["doubled", "nothing"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [_loop_weights(), numpy_helper.from_array(np.array(turns, dtype=np.int64), "turns"),
         numpy_helper.from_array(np.eye(64, dtype=np.float32), "seed"),
         numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
         numpy_helper.from_array(np.array(2, dtype=np.float32), "two")],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    _write_config(repo / name, f"platform: onnx\nparameters: {{intra_op_threads: 1}}\n{config}")


def failing_model(repo: Path) -> None:
    """``failing``: a Reshape to [3] that fails at run time unless the input has 3 elements."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])], "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array([3], dtype=np.int64), "target")],
    )
    _save(graph, repo / "failing" / "1" / "model.onnx")
    _write_config(repo / "failing", "platform: onnx\nmax_batch_size: 0\n")


def digits_model(repo: Path) -> None:
    """The example repository's digits classifier, built by the project's own script."""
    build = load_script("build_model_repo")
    build.build_repo(repo)


def broken_models(repo: Path) -> None:
    """Models that must fail to load, each for a different reason."""
    _write_config(repo / "bad_config", "platform: onnx\nmax_batch_size: -1\nbogus_key: 1\n")
    (repo / "bad_config" / "1").mkdir()
    _write_config(repo / "missing_file", "platform: onnx\nmax_batch_size: 0\n")
    (repo / "missing_file" / "1").mkdir()
    _write_config(repo / "corrupt_file", "platform: onnx\nmax_batch_size: 0\n")
    (repo / "corrupt_file" / "1").mkdir()
    (repo / "corrupt_file" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    flat_identity_model(repo, "contradicts")
    (repo / "contradicts" / "config.yaml").write_text(
        "platform: onnx\nmax_batch_size: 0\ninputs: [{name: x, datatype: INT32, shape: [-1]}]\n"
    )


def copy_example_config(repo: Path) -> None:
    """Use the committed example config for the digits model (so tests check the real file)."""
    source = Path(__file__).resolve().parent.parent / "model_repo" / "digits_onnx" / "config.yaml"
    shutil.copy(source, repo / "digits_onnx" / "config.yaml")


def offset_version(repo: Path, name: str, version: int, offset: float | None = None) -> None:
    """Version ``version`` of model ``name``: y = x + offset (the version number by default) for x of shape
    [batch, 4], so a reply shows which version answered. Written beside the model and renamed into place,
    so a repository poll never sees a half-written version folder."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full(4, version if offset is None else offset, dtype=np.float32), "offset")],
    )
    staging = repo / name / f".staging-{version}"
    _save(graph, staging / "model.onnx")
    staging.rename(repo / name / str(version))


def offset_model(repo: Path, name: str, versions: tuple[int, ...] = (1,), config: str = "") -> None:
    """``name``: the versions of ``offset_version``, batching up to 4, serving the latest version only."""
    (repo / name).mkdir(parents=True, exist_ok=True)
    for version in versions:
        offset_version(repo, name, version)
    _write_config(repo / name, f"platform: onnx\nmax_batch_size: 4\n{config}")


def rows_seen_model(repo: Path, name: str, config: str) -> None:
    """``x`` FP32 [batch, 2] -> ``rows`` FP32 [batch, 2]: ``x`` plus the number of rows of the batch it
    ran in, so a reply shows the size its batch was executed at (padding included)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Cast", ["batch"], ["batch_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "batch_f"], ["rows"]),
    ]
    initializers = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                    numpy_helper.from_array(np.array([1], np.int64), "one")]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2])], initializers)
    _save(graph, repo / name / "1" / "model.onnx")
    _write_config(repo / name, f"platform: onnx\n{config}")
