"""A model repository laid out exactly as Triton's documentation lays one out, built on the fly:

    model_repository/<model>/config.pbtxt
    model_repository/<model>/1/model.onnx | model.pt | model.savedmodel/

Weights are seeded (numpy's default_rng(0)); nothing is downloaded. As in
tests/framework_models.py, TensorFlow never enters the test process: the SavedModels are
built by ``python -m tests.triton_models REPO``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The affine map every model here computes on rows of 4: y = x @ WEIGHTS + BIAS.
WEIGHTS = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
BIAS = np.arange(4, dtype=np.float32)

ONNX_CONFIG = """name: "simple_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

# Triton's PyTorch naming: <name>__<index>. The outputs are listed out of order on purpose:
# OUTPUT__0 is the first value forward returns wherever the config lists it.
TORCHSCRIPT_CONFIG = """name: "simple_torchscript"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "INPUT__1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT__1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters: { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""

SAVEDMODEL_CONFIG = """name: "simple_savedmodel"
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
"""

# Backend only, tensors read from the signature, and a SavedModel folder of another name.
NAMED_SAVEDMODEL_CONFIG = """backend: "tensorflow"
max_batch_size: 8
default_model_filename: "exported.savedmodel"
"""

REFUSED_CONFIG = """platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
"""


def _config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text)


def onnx_model(repo: Path, name: str = "simple_onnx", config: str = ONNX_CONFIG) -> None:
    """``OUTPUT0 = INPUT0 @ WEIGHTS + BIAS``, batched."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(WEIGHTS, "w"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, repo / name / "1" / "model.onnx")
    _config(repo / name, config)


def torchscript_model(repo: Path) -> None:
    """Triton's add/sub example with weights: ``(a @ WEIGHTS + b, a @ WEIGHTS - b)``."""
    import torch

    class AddSub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(WEIGHTS), requires_grad=False)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            projected = a @ self.w
            return projected + b, projected - b

    path = repo / "simple_torchscript" / "1" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(AddSub()), str(path))
    _config(repo / "simple_torchscript", TORCHSCRIPT_CONFIG)


def savedmodels(repo: Path) -> None:
    """simple_savedmodel and named_savedmodel, built in a child process."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "tests.triton_models", str(repo)], cwd=root, capture_output=True,
                         text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout + run.stderr


def _savedmodel(path: Path) -> None:
    """``y = x @ WEIGHTS + BIAS`` for x of shape [batch, 4], signature ``serving_default``."""
    import tensorflow as tf

    class Affine(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(WEIGHTS, trainable=False)
            self.b = tf.Variable(BIAS, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": tf.matmul(x, self.w) + self.b}

    module = Affine()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def refused_and_bare_models(repo: Path) -> None:
    """``refused``: a config.pbtxt with a reshape; ``no_config``: a model file and no config at all."""
    onnx_model(repo, "refused", REFUSED_CONFIG)
    onnx_model(repo, "no_config")
    (repo / "no_config" / "config.pbtxt").unlink()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    _savedmodel(target / "simple_savedmodel" / "1" / "model.savedmodel")
    _config(target / "simple_savedmodel", SAVEDMODEL_CONFIG)
    _savedmodel(target / "named_savedmodel" / "1" / "exported.savedmodel")
    _config(target / "named_savedmodel", NAMED_SAVEDMODEL_CONFIG)
