"""JAX adapter: platform ``jax``, file ``model.jax``: a function serialised by ``jax.export``.

The exported function takes either ``inputs`` or ``(params, inputs)``; ``inputs`` is a dict
of arrays (its keys are the input names) or one array (named by the config), and the
result is a dict of arrays (named) or an array or tuple of arrays (named by the config).
With ``params``, they are read from ``params.npz`` beside ``model.jax`` (one array per
key of the params dict) and placed on the device once. Names, dtypes and shapes come
from the export, so the config may leave inputs and outputs out.

Jitted code compiles once per input shape, so a batched model (``max_batch_size > 0``,
batch dimension symbolic in the export) serves a fixed set of *buckets*: the configured
``dynamic_batching.preferred_batch_sizes``, or else the powers of two, up to and always
including ``max_batch_size``. Every bucket is compiled and run once while the model
loads; each batch is zero-padded up to the smallest bucket that holds it and the padding
is sliced off the outputs, so no request waits for a compilation. Every XLA compilation
in the worker is counted through ``jax.monitoring``: the load logs
``event=jax_warmed ... compiles=N`` and any later one logs ``event=jax_compile
phase=serving`` (only a model with symbolic dimensions other than the batch can cause
that; it compiles each new shape once).

Threads: XLA's CPU thread pool belongs to the process; ``intra_op_threads: 1`` compiles
the model's kernels single-threaded (``xla_cpu_multi_thread_eigen=false``). GPU: XLA is
told not to preallocate GPU memory; ``cuda:N`` needs a CUDA-enabled jaxlib, and a model
exported for that platform.
"""

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

# Before jax is imported: XLA reads these once, when its GPU client starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.monitoring
import numpy as np
from jax.sharding import SingleDeviceSharding

from gateway.contract import LoadModel, Signature, TensorSpec
from gateway.logs import log_event
from runtimes.base import (
    InvalidInput,
    ModelLoadError,
    RuntimeAdapter,
    batch_buckets,
    bucket_for,
    cuda_index,
    default_threads,
    pad_rows,
)

# An exported function fixes its own dtypes; 64-bit mode lets int64/float64 ones run as exported.
jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]

log = logging.getLogger("tensorgate.jax")
# jax logs at INFO each accelerator plugin it does not find (libtpu...): not news in a server's log.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

MODEL_FILE = "model.jax"
PARAMS_FILE = "params.npz"
#: The jax.monitoring event recorded once per XLA compilation.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}

_local = threading.local()  # .adapter: the model this thread runs or loads; .warmup: inside its load


def _count_compile(event: str, duration_secs: float, **_: str | int) -> None:
    if event != BACKEND_COMPILE_EVENT:
        return
    adapter: JaxAdapter | None = getattr(_local, "adapter", None)
    if adapter is not None and getattr(_local, "warmup", False):
        adapter.warmup_compiles += 1
        return
    if adapter is not None:
        adapter.serving_compiles += 1
    log_event(log, "jax_compile", level=logging.WARNING, phase="serving",
              model=adapter.spec.model_name if adapter else "-", seconds=duration_secs)


jax.monitoring.register_event_duration_secs_listener(_count_compile)


class JaxAdapter(RuntimeAdapter):
    """One exported function, compiled per bucket for one device."""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        self.warmup_compiles = 0
        self.serving_compiles = 0
        path = Path(spec.path) / (spec.filename or MODEL_FILE)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        self._device = _jax_device(spec.device)
        try:
            self._exported = jax.export.deserialize(bytearray(path.read_bytes()))
        except Exception as exc:  # flatbuffer and version errors: any of them means "not usable"
            raise ModelLoadError(f"{path}: not a jax.export serialization: {_first_line(exc)}") from None
        if self._device.platform not in self._exported.platforms:
            raise ModelLoadError(f"{path}: exported for {list(self._exported.platforms)}, "
                                 f"not for {self._device.platform} ({spec.device})")
        self._path = path
        self._sharding = SingleDeviceSharding(self._device)
        self._parse_structure()
        self._signature = Signature(tuple(self._input_specs), tuple(self._output_specs))
        threads = int(spec.parameters.get("intra_op_threads", default_threads(spec.instances)))
        self._options: dict[str, str | bool] = {"xla_cpu_multi_thread_eigen": False} \
            if threads == 1 and self._device.platform == "cpu" else {}
        self._compiled: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._compile_lock = threading.Lock()
        self.buckets = batch_buckets(spec.max_batch_size, spec.preferred_batch_sizes) \
            if self._batch_symbolic() else ()
        self._warm_up()

    def signature(self) -> Signature:
        return self._signature

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        _local.adapter, _local.warmup = self, False  # a compilation from here on is one a request waits for
        for spec in self._input_specs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"input '{spec.name}' is missing")
            if array.dtype != self._dtypes[spec.name]:
                raise InvalidInput(f"input '{spec.name}': {array.dtype} does not fit the model's {spec.datatype}")
            if array.ndim != len(spec.shape) or any(want not in (-1, got) for got, want in
                                                    zip(array.shape, spec.shape, strict=True)):
                raise InvalidInput(f"input '{spec.name}': shape {list(array.shape)} does not fit the model's "
                                   f"{list(spec.shape)}")
        rows = inputs[self._input_specs[0].name].shape[0] if self.buckets else 0
        if self.buckets:
            bucket = bucket_for(rows, self.buckets)
            inputs = {name: pad_rows(array, bucket) for name, array in inputs.items()}
        shapes = tuple(inputs[s.name].shape for s in self._input_specs)
        compiled = self._compiled.get(shapes)
        if compiled is None:  # only symbolic non-batch dimensions get here
            compiled = self._compile(shapes)
        results = self._run(compiled, inputs)
        return {name: (results[name][:rows] if self.buckets else results[name]) for name in outputs}

    def _run(self, compiled: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [jax.device_put(inputs[s.name], self._sharding) for s in self._input_specs]
        packed = self._pack(arrays)
        leaves = jax.tree_util.tree_leaves(compiled(*packed))
        return {s.name: np.asarray(leaf) for s, leaf in zip(self._output_specs, leaves, strict=True)}

    def _compile(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        with self._compile_lock:
            compiled = self._compiled.get(shapes)
            if compiled is None:
                structs = [jax.ShapeDtypeStruct(shape, self._dtypes[s.name], sharding=self._sharding)  # type: ignore[no-untyped-call]
                           for s, shape in zip(self._input_specs, shapes, strict=True)]
                lowered = jax.jit(self._exported.call).lower(*self._pack(structs))
                compiled = lowered.compile(compiler_options=self._options or None)
                self._compiled[shapes] = compiled
            return compiled

    def _warm_up(self) -> None:
        """Compile and run every bucket (or the one static shape) before the model is ready."""
        started = time.perf_counter()
        _local.adapter, _local.warmup = self, True
        try:
            if self.buckets:
                shape_sets = [tuple((b, *s.shape[1:]) for s in self._input_specs) for b in self.buckets]
            elif all(d != -1 for s in self._input_specs for d in s.shape):
                shape_sets = [tuple(s.shape for s in self._input_specs)]
            else:
                shape_sets = []  # symbolic dimensions other than a batch: compiled per shape when served
            if any(d == -1 for shapes in shape_sets for shape in shapes for d in shape):
                raise ModelLoadError(f"{self._path}: dimensions other than the batch are symbolic; serve it with "
                                     "max_batch_size: 0")
            for shapes in shape_sets:
                compiled = self._compile(shapes)
                zeros = {s.name: np.zeros(shape, self._dtypes[s.name])
                         for s, shape in zip(self._input_specs, shapes, strict=True)}
                self._run(compiled, zeros)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self._path}: cannot compile for {self.spec.device}: {_first_line(exc)}") from None
        finally:
            _local.adapter, _local.warmup = None, False
        log_event(log, "jax_warmed", model=self.spec.model_name, version=Path(self.spec.path).name,
                  buckets=",".join(map(str, self.buckets)) or "-", compiles=self.warmup_compiles,
                  seconds=time.perf_counter() - started)

    def _parse_structure(self) -> None:
        """Read names, dtypes and shapes from the export's pytrees; load params.npz when it takes params."""
        exported = self._exported
        n_in = len(exported.in_avals)
        args, kwargs = jax.tree_util.tree_unflatten(exported.in_tree, list(range(n_in)))
        if kwargs or len(args) not in (1, 2):
            raise ModelLoadError(f"{self._path}: the exported function must take (inputs) or (params, inputs)")
        self._params: Any = None
        if len(args) == 2:
            self._params = self._load_params(args[0])
        layout = args[-1]
        configured_in = [name for name, _ in self.spec.inputs or []]
        if isinstance(layout, dict) and all(isinstance(v, int) for v in layout.values()):
            names_at = {index: str(name) for name, index in layout.items()}
        elif isinstance(layout, int) and len(configured_in) == 1:
            names_at = {layout: configured_in[0]}
        else:
            raise ModelLoadError(f"{self._path}: the exported inputs must be a dict of arrays, or one array "
                                 "named by the config's single input")
        self._inputs_layout = layout
        self._input_specs = [_spec(self._path, names_at[i], exported.in_avals[i]) for i in sorted(names_at)]
        self._dtypes = {names_at[i]: np.dtype(exported.in_avals[i].dtype) for i in names_at}
        out_layout = jax.tree_util.tree_unflatten(exported.out_tree, list(range(len(exported.out_avals))))
        configured_out = [name for name, _ in self.spec.outputs or []]
        if isinstance(out_layout, dict) and all(isinstance(v, int) for v in out_layout.values()):
            out_names = {index: str(name) for name, index in out_layout.items()}
        elif isinstance(out_layout, int) and len(configured_out) == 1:
            out_names = {0: configured_out[0]}
        elif isinstance(out_layout, (tuple, list)) and len(configured_out) == len(out_layout) and all(
            isinstance(v, int) for v in out_layout
        ):
            out_names = dict(zip(out_layout, configured_out, strict=True))
        else:
            raise ModelLoadError(f"{self._path}: the exported outputs must be a dict of arrays, or arrays named by "
                                 "the config's outputs (as many as it returns)")
        self._output_specs = [_spec(self._path, out_names[i], exported.out_avals[i]) for i in sorted(out_names)]

    def _pack(self, arrays: list[Any]) -> tuple[Any, ...]:
        """Arrange the inputs (in ``_input_specs`` order) as the exported function takes them."""
        by_name = {s.name: a for s, a in zip(self._input_specs, arrays, strict=True)}
        if isinstance(self._inputs_layout, dict):
            inputs: Any = {name: by_name[name] for name in self._inputs_layout}
        else:
            inputs = arrays[0]
        return (inputs,) if self._params is None else (self._params, inputs)

    def _load_params(self, layout: Any) -> Any:
        path = self._path.parent / PARAMS_FILE
        if not isinstance(layout, dict) or not all(isinstance(v, int) for v in layout.values()):
            raise ModelLoadError(f"{self._path}: the params argument must be a flat dict of arrays")
        if not path.is_file():
            raise ModelLoadError(f"{path}: params file not found (the exported function takes params)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored = {key: npz[key] for key in npz.files}
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a readable .npz: {_first_line(exc)}") from None
        if sorted(stored) != sorted(layout):
            raise ModelLoadError(f"{path}: holds {sorted(stored)}, but the function takes params {sorted(layout)}")
        params = {}
        for key, index in layout.items():
            aval = self._exported.in_avals[index]
            value = stored[key]
            if value.shape != tuple(aval.shape) or value.dtype != np.dtype(aval.dtype):
                raise ModelLoadError(f"{path}: '{key}' is {value.dtype}{list(value.shape)}, but the function takes "
                                     f"{np.dtype(aval.dtype)}{list(aval.shape)}")
            params[key] = jax.device_put(value, self._sharding)
        return params

    def _batch_symbolic(self) -> bool:
        return self.spec.max_batch_size > 0 and all(s.shape and s.shape[0] == -1 for s in self._input_specs)


def _jax_device(device: str) -> Any:
    index = cuda_index(device)
    if index is None:
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        raise ModelLoadError(f"device {device} requested, but this jaxlib has no CUDA backend "
                             "(install jax[cuda12] on a machine with an NVIDIA GPU)") from None
    if index >= len(gpus):
        raise ModelLoadError(f"device {device} requested, but JAX sees only {len(gpus)} GPU(s)")
    return gpus[index]


def _spec(path: Path, name: str, aval: Any) -> TensorSpec:
    datatype = _DATATYPES.get(np.dtype(aval.dtype).name)
    if datatype is None:
        raise ModelLoadError(f"{path}: tensor '{name}' has dtype {aval.dtype}, which cannot be served")
    return TensorSpec(name, datatype, tuple(d if isinstance(d, int) else -1 for d in aval.shape))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
