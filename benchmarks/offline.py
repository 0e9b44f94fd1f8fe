"""The model's own limit: the framework called directly in one process, no server.

``python -m benchmarks.offline`` loads the model file the server serves, with the same
framework threads as the server's worker (ONNX Runtime: same session options as
``runtimes/onnx.py``; torch: ``set_num_threads`` and ``inference_mode`` as
``runtimes/torchscript.py``, with their linear layers on the kernel the server uses, ``--linear-kernel``
(``runtimes/onednn_linear.py``); an AOTInductor package called as ``runtimes/torch_aoti.py`` calls
it, through its loader's ``boxed_run``; LiteRT: the adapter of ``runtimes/tflite.py`` itself, which
holds the interpreter, its shape cache and the quantization the server applies), and times one call
per batch size: the median of repeated calls after a warm-up. ``--inputs`` describes the
model's inputs as the server states them (JSON: {"batched": bool, "tensors": [{"name",
"datatype", "shape"}]}, shapes without the batch dim), and the data is generated as for the
served requests (``benchmarks.inputs``). Prints ``TGBENCH {json}``: {"framework", "threads",
"batches": {size: {"median_ms", "mean_ms", "runs"}}}.

``--device cuda:N`` times a TorchScript or torch.export model on that GPU as a worker hosts it
there: each call copies the batch from host memory to the device and its outputs back, so the
limit includes the two copies a served batch cannot avoid.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cli import DEVICE_FORMATS
from benchmarks.inputs import SEED, generate
from gateway.repository.pt2 import is_aoti_package
from runtimes.onednn_linear import DEFAULT_LINEAR_KERNEL, LINEAR_KERNELS, Rewritten

RESULT_PREFIX = "TGBENCH "
#: Formats timed offline, and the file a Triton-style repository holds them in.
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2", "torch_aoti": "model.pt2",
               "tflite": "model.tflite"}
#: Metadata platforms (Triton's names, which TensorGate reports too) of those formats.
PLATFORMS = {"onnxruntime_onnx": "onnx", "onnx": "onnx", "pytorch_libtorch": "torchscript",
             "torchscript": "torchscript", "pytorch_torch_export": "torch_export", "torch_export": "torch_export",
             "pytorch_torch_aoti": "torch_aoti", "torch_aoti": "torch_aoti", "tflite": "tflite"}
Runner = Callable[[list[tuple[str, np.ndarray]]], object]
#: A format's runner factory: (model file, framework threads, whether the server batches the model).
RunnerFactory = Callable[[Path, int, bool], tuple[str, Runner]]


def onnx_runner(path: Path, threads: int, batched: bool) -> tuple[str, Runner]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        return session.run(outputs, dict(inputs))

    def check(inputs: list[tuple[str, np.ndarray]]) -> object:
        missing = sorted({name for name, _ in inputs} - names)
        if missing:
            raise SystemExit(f"{path} has no input {', '.join(missing)} (its inputs: {', '.join(sorted(names))})")
        return run(inputs)

    return f"onnxruntime {ort.__version__}", check


def _torch_threads(threads: int) -> None:
    """The worker's torch threads: ``threads`` intra-op, one inter-op (which torch lets a process set only once)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # set already in this process: it keeps its first value
        torch.set_num_interop_threads(1)


def _on_onednn(rewritten: Rewritten) -> str:
    """What the framework name says about the linear layers: as the server runs them."""
    if not rewritten.layers:
        return ""
    return f", linear layers on oneDNN ({rewritten.packed} of {rewritten.layers} on packed weights)"


def torchscript_runner(path: Path, threads: int, batched: bool,
                       linear_kernel: str = DEFAULT_LINEAR_KERNEL) -> tuple[str, Runner]:
    import torch

    from runtimes.onednn_linear import use_onednn_linear
    from runtimes.torchscript import JIT_LOAD_DEPRECATION

    _torch_threads(threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_LOAD_DEPRECATION, category=DeprecationWarning)
        module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    module.eval()
    framework = f"torch {torch.__version__}"
    if linear_kernel != "aten":
        framework += _on_onednn(use_onednn_linear(module, pack=linear_kernel == "onednn"))

    def tensor(x: np.ndarray) -> Any:
        if x.dtype.kind == "O":
            raise SystemExit("TorchScript takes no BYTES input")
        if x.dtype.name == "bfloat16":
            return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(x)

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        with torch.inference_mode():
            return module(*(tensor(x) for _, x in inputs))

    return framework, run


def torch_export_runner(path: Path, threads: int, batched: bool,
                        linear_kernel: str = DEFAULT_LINEAR_KERNEL) -> tuple[str, Runner]:
    import torch

    from runtimes.onednn_linear import use_onednn_linear_fx

    _torch_threads(threads)
    module = torch.export.load(str(path)).module()
    framework = f"torch {torch.__version__}"
    if linear_kernel != "aten":
        framework += _on_onednn(use_onednn_linear_fx(module, pack=linear_kernel == "onednn"))

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        with torch.inference_mode():
            return module(*(torch.from_numpy(x) for _, x in inputs))

    return framework, run


def torch_aoti_runner(path: Path, threads: int, batched: bool) -> tuple[str, Runner]:
    import torch

    _torch_threads(threads)
    loader = torch._inductor.aoti_load_package(str(path), run_single_threaded=True).loader

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        with torch.inference_mode():
            return loader.boxed_run([torch.from_numpy(x) for _, x in inputs])

    return f"torch {torch.__version__} (AOTInductor)", run


def tflite_runner(path: Path, threads: int, batched: bool) -> tuple[str, Runner]:
    """The server's own adapter: the interpreter's run plus the (de)quantizing, and a fixed batch dimension
    run in pieces when the server batches the model (as it does then)."""
    from importlib.metadata import version

    from gateway.contract import LoadModel
    from runtimes.tflite import TFLiteAdapter

    spec = LoadModel(key=f"{path}:offline", model_name=path.parent.parent.name, path=str(path.parent),
                     platform="tflite", max_batch_size=1 if batched else 0, device="cpu", instances=1,
                     parameters={"intra_op_threads": threads}, filename=path.name)
    adapter = TFLiteAdapter(spec)
    outputs = [t.name for t in adapter.signature().outputs]

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        return adapter.execute(dict(inputs), outputs)

    return f"ai-edge-litert {version('ai-edge-litert')}", run


def torch_device_runner(fmt: str, path: Path, threads: int, device: str) -> tuple[str, Runner]:
    """A TorchScript or torch.export model on ``device``: batch in from host memory, outputs back to it."""
    import torch

    from runtimes.torchscript import JIT_LOAD_DEPRECATION

    _torch_threads(threads)
    target = torch.device(device)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_LOAD_DEPRECATION, category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=target)  # type: ignore[no-untyped-call]
        module.eval()
    else:
        module = torch.export.load(str(path)).module().to(target)

    def to_host(value: Any) -> object:
        if isinstance(value, torch.Tensor):
            return value.cpu()  # waits for the device, so the call's time includes its work
        if isinstance(value, (tuple, list)):
            return [to_host(v) for v in value]
        if isinstance(value, dict):
            return {k: to_host(v) for k, v in value.items()}
        return value

    def run(inputs: list[tuple[str, np.ndarray]]) -> object:
        with torch.inference_mode():
            return to_host(module(*(torch.from_numpy(x).to(target) for _, x in inputs)))

    return f"torch {torch.__version__} on {device}", run


RUNNERS: dict[str, RunnerFactory] = {"onnx": onnx_runner, "torchscript": torchscript_runner,
                                     "torch_export": torch_export_runner, "torch_aoti": torch_aoti_runner,
                                     "tflite": tflite_runner}


#: The formats whose linear layers the server may move to oneDNN (``parameters.linear_kernel``).
LINEAR_FORMATS = {"torchscript": torchscript_runner, "torch_export": torch_export_runner}


def format_of(version: Path) -> str | None:
    """The timed format whose file a version folder holds (a ``.pt2``'s contents tell which of two)."""
    for fmt, name in MODEL_FILES.items():
        if (version / name).is_file() and (fmt != "torch_export" or not is_aoti_package(version / name)):
            return fmt
    return None


def measure(run: Runner, x: list[tuple[str, np.ndarray]], min_time: float, min_runs: int = 5,
            warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        run(x)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "mean_ms": statistics.fmean(times) * 1e3,
            "runs": float(len(times))}


def batch_inputs(description: dict[str, Any], size: int, rng: np.random.Generator,
                 onnx_strings: bool) -> list[tuple[str, np.ndarray]]:
    """The inputs of one batch of ``size`` rows (one request's tensors for a model that does not batch)."""
    inputs = []
    for t in description["tensors"]:
        shape = (size, *t["shape"]) if description["batched"] else tuple(t["shape"])
        x = generate(t["datatype"], shape, rng)
        if onnx_strings and x.dtype.kind == "O":  # ONNX Runtime takes str elements for STRING tensors
            x = np.array([e.decode() for e in x.reshape(-1)], dtype=object).reshape(shape)
        inputs.append((str(t["name"]), x))
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offline", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--inputs", required=True, help='JSON: {"batched": bool, "tensors": [{"name", "datatype", '
                                                        '"shape"}]}, shapes without the batch dim')
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per batch size")
    parser.add_argument("--device", default="cpu", help=f"cpu, or cuda:N for {' and '.join(DEVICE_FORMATS)}")
    parser.add_argument("--linear-kernel", choices=LINEAR_KERNELS, default=DEFAULT_LINEAR_KERNEL,
                        help="TorchScript and torch.export on the CPU: the kernel of their linear layers, as "
                             "parameters.linear_kernel")
    args = parser.parse_args(argv)
    description = json.loads(args.inputs)
    if args.device == "cpu":
        factory = RUNNERS[args.format]
        if args.format in LINEAR_FORMATS:
            factory = functools.partial(LINEAR_FORMATS[args.format], linear_kernel=args.linear_kernel)
        framework, run = factory(args.model_file, args.threads, bool(description["batched"]))
    elif args.format in DEVICE_FORMATS:
        framework, run = torch_device_runner(args.format, args.model_file, args.threads, args.device)
    else:
        parser.error(f"--device {args.device}: only {' and '.join(DEVICE_FORMATS)} are timed off the CPU")
    rng = np.random.default_rng(SEED)
    batches = {}
    for size in sorted({int(s) for s in args.batch_sizes.split(",") if s}):
        x = batch_inputs(description, size, rng, onnx_strings=args.format == "onnx")
        batches[str(size)] = measure(run, x, args.min_time)
    sys.stdout.write(RESULT_PREFIX + json.dumps({"framework": framework, "threads": args.threads,
                                                 "batches": batches}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
