"""TensorFlow adapter: platform ``savedmodel`` (alias ``tensorflow_savedmodel``), folder ``model.savedmodel/``,
or TF Serving's layout, where the version folder itself is the SavedModel (``<version>/saved_model.pb``).

Loaded with ``tf.saved_model.load``; the signature is ``parameters.signature_name``
(default ``serving_default``). Its structured input and output specs give every
tensor's name, dtype and shape, so the config may leave inputs and outputs out.

TensorFlow's thread pools and GPU options belong to the process and are fixed by its
first operation, so the first model loaded in the worker sets them: ``intra_op_threads``
(default: the CPUs divided among the instances) and ``inter_op_threads`` (default 1).
GPU memory grows on demand (never grab-all). Device ``cuda:N`` runs the signature under
``tf.device('/GPU:N')``; TensorFlow copies inputs there and results back once.
"""

import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np

from gateway.contract import LoadModel, Signature, TensorSpec
from gateway.logs import log_event
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter, cuda_index, default_threads

# Before TensorFlow is imported: its C++ logging reads this once.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's TFLite helpers import jax whenever it is installed; this worker runs TensorFlow
# alone, so hide jax while TensorFlow loads (a None entry makes ``import jax`` fail).
_hide_jax = "jax" not in sys.modules
if _hide_jax:
    sys.modules["jax"] = None  # type: ignore[assignment]
try:
    import tensorflow as tf
finally:
    if _hide_jax:
        del sys.modules["jax"]


log = logging.getLogger("tensorgate.tensorflow")

MODEL_DIR = "model.savedmodel"
DEFAULT_SIGNATURE = "serving_default"

_DATATYPES: dict[tf.dtypes.DType, str] = {
    tf.bool: "BOOL", tf.uint8: "UINT8", tf.uint16: "UINT16", tf.uint32: "UINT32", tf.uint64: "UINT64",
    tf.int8: "INT8", tf.int16: "INT16", tf.int32: "INT32", tf.int64: "INT64", tf.float16: "FP16",
    tf.float32: "FP32", tf.float64: "FP64", tf.bfloat16: "BF16", tf.string: "BYTES",
}

_setup_lock = threading.Lock()
_threads: tuple[int, int] | None = None


class SavedModelAdapter(RuntimeAdapter):
    """One signature of one SavedModel; its concrete function is safe to call from many threads."""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        path = Path(spec.path) / (spec.filename or MODEL_DIR)
        if spec.filename is None and not path.exists() and (Path(spec.path) / "saved_model.pb").is_file():
            path = Path(spec.path)  # TF Serving's layout
        if not (path / "saved_model.pb").is_file():
            what = "saved_model.pb not found in it" if path.is_dir() else "model folder not found"
            raise ModelLoadError(f"{path}: {what}")
        params = spec.parameters
        _configure_process(int(params.get("intra_op_threads", default_threads(spec.instances))),
                           int(params.get("inter_op_threads", 1)), spec.model_name)
        self._device = _tf_device(spec.device)
        try:
            with tf.device(self._device):
                self._model = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises OSError, ValueError, protobuf DecodeError, OpError...
            raise ModelLoadError(f"{path}: not a loadable SavedModel: {_first_line(exc)}") from None
        name = str(params.get("signature_name", DEFAULT_SIGNATURE))
        signatures = self._model.signatures
        if name not in signatures:
            raise ModelLoadError(f"{path}: no signature '{name}' (it has {sorted(signatures.keys())}); "
                                 "set parameters.signature_name")
        self._function = signatures[name]
        args, kwargs = self._function.structured_input_signature
        if args:
            raise ModelLoadError(f"{path}: signature '{name}' takes positional inputs; serving needs named ones")
        outputs = self._function.structured_outputs
        if not isinstance(outputs, dict):
            raise ModelLoadError(f"{path}: signature '{name}' returns {type(outputs).__name__}, not named outputs")
        self._inputs = {key: _spec(path, key, value) for key, value in sorted(kwargs.items())}
        self._signature = Signature(tuple(self._inputs.values()),
                                    tuple(_spec(path, key, value) for key, value in sorted(outputs.items())))

    def signature(self) -> Signature:
        return self._signature

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            spec = self._inputs.get(name)
            if spec is None:
                raise InvalidInput(f"the signature has no input '{name}'")
            if array.ndim != len(spec.shape) or any(
                want not in (-1, got) for got, want in zip(array.shape, spec.shape, strict=True)
            ):
                raise InvalidInput(f"input '{name}': shape {list(array.shape)} does not fit the signature's "
                                   f"{list(spec.shape)}")
            feed[name] = tf.constant(array)
            if _DATATYPES.get(feed[name].dtype) != spec.datatype:
                raise InvalidInput(f"input '{name}': {array.dtype} does not fit the signature's {spec.datatype}")
        with tf.device(self._device):
            results = self._function(**feed)
        return {name: results[name].numpy() for name in outputs}


def _configure_process(intra: int, inter: int, model: str) -> None:
    """Threads and GPU memory growth, once, before TensorFlow runs its first operation."""
    global _threads
    with _setup_lock:
        if _threads is None:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
            _threads = (intra, inter)
        elif _threads != (intra, inter):
            log_event(log, "tf_threads_fixed", level=logging.WARNING, model=model, asked=f"{intra}/{inter}",
                      kept=f"{_threads[0]}/{_threads[1]}")


def _tf_device(device: str) -> str:
    index = cuda_index(device)
    if index is None:
        return "/CPU:0"
    gpus = tf.config.list_physical_devices("GPU")
    if index >= len(gpus):
        raise ModelLoadError(f"device {device} requested, but TensorFlow sees {len(gpus)} GPU(s) "
                             "(tensorflow-cpu has none; install tensorflow[and-cuda] on an NVIDIA machine)")
    return f"/GPU:{index}"


def _spec(path: Path, name: str, value: object) -> TensorSpec:
    if not isinstance(value, tf.TensorSpec):
        raise ModelLoadError(f"{path}: signature tensor '{name}' is a {type(value).__name__}, not a dense tensor")
    datatype = _DATATYPES.get(value.dtype)
    if datatype is None:
        raise ModelLoadError(f"{path}: tensor '{name}' has dtype {value.dtype.name}, which cannot be served")
    if value.shape.rank is None:
        raise ModelLoadError(f"{path}: tensor '{name}' has no known rank")
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in value.shape.as_list()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
