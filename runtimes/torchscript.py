"""PyTorch adapters' common part, and platform ``torchscript`` (alias ``pytorch_libtorch``): ``model.pt``.

A TorchScript module carries no tensor names or dtypes, so the config lists the inputs and
outputs. Inputs are passed by name when the config's input names are exactly the
arguments of the module's ``forward``, else positionally in config order; a tuple or
list result maps to the configured outputs in order, a dict result by key, a single
tensor to the one configured output. The ``torch_export`` platform (``torch_export.py``)
shares all of this.

Threads: ``intra_op_threads`` (default: the CPUs divided among the instances) is applied
to each instance thread before it runs the model; torch's OpenMP setting is per thread,
so models in one worker keep their own. ``inter_op_threads`` (default 1) only serves
TorchScript's ``fork``; torch fixes it once per process, so the first model loaded in the
worker decides it.

Linear layers: on the CPU, ``parameters.linear_kernel`` (default ``onednn``) runs both formats'
FP32 ``aten::linear`` calls on oneDNN, with each weight attribute packed once into oneDNN's layout
(``runtimes/onednn_linear.py``: 2x faster than aten at batch 8-16 here); ``onednn_unpacked`` skips
the packed copies (their memory), and ``aten`` keeps torch's own call.

Device: ``cuda:N`` moves the weights there; each batch is gathered straight into pinned host memory
(``runtimes/staging.py``), copied to the GPU once, and its outputs copied back once.
"""

import contextlib
import logging
import threading
import warnings
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import torch

from gateway.contract import LoadModel, Signature
from gateway.logs import log_event
from gateway.scheduling.scheduler import Inputs
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter, cuda_index, default_threads
from runtimes.onednn_linear import linear_kernel, use_onednn_linear
from runtimes.staging import gather_into, pinned_bytes

log = logging.getLogger("tensorgate.torch")

#: torch 2.13 deprecates every torch.jit entry point; loading TorchScript is this adapter's point.
JIT_LOAD_DEPRECATION = r"`torch\.jit\.load` is deprecated"

#: Protocol datatype -> torch dtype (BYTES has no torch equivalent).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "UINT16": torch.uint16, "UINT32": torch.uint32,
    "UINT64": torch.uint64, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
    "INT64": torch.int64, "FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
DATATYPE_OF: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}

_interop_lock = threading.Lock()
_interop_threads: int | None = None


class TorchScriptError(Exception):
    """An error raised inside a TorchScript module (its message is the interpreter's last line)."""


class TorchAdapter(RuntimeAdapter):
    """What both PyTorch formats share: device, threads, tensor conversion, output mapping."""

    MODEL_FILE = ""

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        self.path = Path(spec.path) / (spec.filename or self.MODEL_FILE)
        if not self.path.exists():
            raise ModelLoadError(f"{self.path}: model file not found")
        self.device = torch_device(spec.device)
        params = spec.parameters
        self.threads = int(params.get("intra_op_threads", default_threads(spec.instances)))
        _fix_interop_threads(int(params.get("inter_op_threads", 1)), spec.model_name)
        for name, datatype in [*(spec.inputs or []), *(spec.outputs or [])]:
            if datatype not in TORCH_DTYPES:
                raise ModelLoadError(f"{self.path}: tensor '{name}' is {datatype}, which torch cannot hold")
        self.output_names = [name for name, _ in spec.outputs or []]
        self.output_datatypes = dict(spec.outputs or [])
        self.input_names: list[str] = []
        self.by_name = False
        try:
            kernel = linear_kernel(params)  # checked on any device, used on the CPU
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        #: Whether the format's adapter moves the model's linear layers to oneDNN (``runtimes/onednn_linear.py``),
        #: and whether it packs their weights.
        self.onednn_linear = kernel != "aten" and self.device.type == "cpu"
        self.pack_weights = kernel == "onednn"

    @abstractmethod
    def run(self, args: list[torch.Tensor], kwargs: dict[str, torch.Tensor]) -> Any:
        """Call the model."""

    def gather(self, batch: list[Inputs]) -> Inputs:
        """On a GPU, into pinned memory (``to_torch`` then copies it to the device as it is)."""
        if self.device.type == "cuda":
            return gather_into(batch, pinned_bytes)
        return super().gather(batch)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # per calling thread (OpenMP), so per model
        with torch.inference_mode():
            tensors = {name: to_torch(inputs[name], self.device) for name in self.input_names}
            if self.by_name:
                result = self.run([], tensors)
            else:
                result = self.run([tensors[name] for name in self.input_names], {})
            named = self.name_outputs(result)
            return {name: to_numpy(named[name]) for name in outputs}

    def name_outputs(self, result: Any) -> dict[str, torch.Tensor]:
        """Map the model's result to the configured output names, checking what the config promised."""
        if isinstance(result, torch.Tensor):
            values: dict[str, Any] = dict(zip(self.output_names[:1], [result], strict=True)) \
                if len(self.output_names) == 1 else {}
            if not values:
                raise RuntimeError(f"the model returned one tensor, but the config lists outputs "
                                   f"{self.output_names}")
        elif isinstance(result, Mapping):
            values = {str(k): v for k, v in result.items()}
            missing = [n for n in self.output_names if n not in values]
            if missing:
                raise RuntimeError(f"the model's result has no output(s) {missing} (it has {sorted(values)})")
        elif isinstance(result, Sequence):
            if len(result) != len(self.output_names):
                raise RuntimeError(f"the model returned {len(result)} values, but the config lists outputs "
                                   f"{self.output_names}")
            values = dict(zip(self.output_names, result, strict=True))
        else:
            raise RuntimeError(f"the model returned {type(result).__name__}, not tensors")
        named: dict[str, torch.Tensor] = {}
        for name in self.output_names:
            value = values[name]
            if not isinstance(value, torch.Tensor):
                raise RuntimeError(f"output '{name}' is a {type(value).__name__}, not a tensor")
            datatype = DATATYPE_OF.get(value.dtype)
            if datatype != self.output_datatypes[name]:
                raise RuntimeError(f"output '{name}' is {datatype or value.dtype} but the config says "
                                   f"{self.output_datatypes[name]}")
            named[name] = value
        return named

    def bind_inputs(self, argument_names: list[str]) -> None:
        """Decide how inputs reach ``forward``: by name if the config uses its argument names, else in order."""
        configured = [name for name, _ in self.spec.inputs or []]
        if not configured:
            raise ModelLoadError(f"{self.path}: the config must list the inputs (this format carries no names)")
        if sorted(configured) == sorted(argument_names):
            self.input_names, self.by_name = configured, True
        elif len(configured) == len(argument_names):
            self.input_names, self.by_name = configured, False
        else:
            raise ModelLoadError(
                f"{self.path}: the model's forward takes {len(argument_names)} input(s) {argument_names}, "
                f"but the config lists {len(configured)}: {configured}"
            )
        if not self.output_names:
            raise ModelLoadError(f"{self.path}: the config must list the outputs (this format carries no names)")


class TorchScriptAdapter(TorchAdapter):
    """A TorchScript module loaded with ``torch.jit.load`` and run under ``torch.inference_mode()``."""

    MODEL_FILE = "model.pt"

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=JIT_LOAD_DEPRECATION, category=DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self.device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors... for a bad file
            raise ModelLoadError(f"{self.path}: not a TorchScript model: {_first_line(exc)}") from None
        module.eval()
        if self.onednn_linear:
            layers, packed = use_onednn_linear(module, self.pack_weights)
            if layers:
                log_event(log, "linear_layers_on_onednn", model=spec.model_name, layers=layers, packed=packed)
        self._module = module
        try:
            arguments = [a.name for a in module.forward.schema.arguments[1:]]  # [0] is self
        except AttributeError:
            raise ModelLoadError(f"{self.path}: the TorchScript module has no forward method") from None
        self.bind_inputs(arguments)

    def signature(self) -> Signature | None:
        return None  # TorchScript has no names or dtypes: the config is the signature

    def run(self, args: list[torch.Tensor], kwargs: dict[str, torch.Tensor]) -> Any:
        try:
            return self._module(*args, **kwargs)
        except torch.jit.Error as exc:
            # The interpreter's message is both tracebacks of the scripted code, then the error itself.
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise TorchScriptError(lines[-1] if lines else "the TorchScript interpreter failed") from None


def torch_device(device: str) -> torch.device:
    """The torch device for ``cpu`` / ``cuda:N``, or a ModelLoadError if that GPU is not there."""
    index = cuda_index(device)
    if index is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {device} requested, but torch {torch.__version__} sees no CUDA GPU "
                             "(a CUDA build of torch and an NVIDIA driver are needed)")
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device} requested, but torch sees only {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor over ``array`` (no copy on the CPU); on a GPU, copied there once (pinned first, unless
    ``TorchAdapter.gather`` already put it in pinned memory: ``pin_memory`` is then a no-op)."""
    if array.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    else:
        if array.dtype.kind in "OSU":
            raise InvalidInput("torch models take no BYTES tensors")
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy wants writable memory
        tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values on the host, as the matching numpy dtype."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    array: np.ndarray = tensor.numpy()
    return array


def _fix_interop_threads(threads: int, model: str) -> None:
    """Set torch's inter-op pool size once per process (torch refuses later changes)."""
    global _interop_threads
    with _interop_lock:
        if _interop_threads is None:
            with contextlib.suppress(RuntimeError):  # already used: torch keeps the size it has
                torch.set_num_interop_threads(threads)
            _interop_threads = torch.get_num_interop_threads()
        if threads != _interop_threads:
            log_event(log, "inter_op_threads_fixed", level=logging.WARNING, model=model, asked=threads,
                      kept=_interop_threads)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
