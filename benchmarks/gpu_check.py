"""Check the example models on a device: load each through its runtime adapter, compare with the CPU, time it.

Usage::

    python benchmarks/gpu_check.py --device cuda:0          # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --device cpu             # what CI runs, so that this keeps working

For each of the example digits models in the repository (``model_repo`` by default; build
them with ``make model_repo``), the script loads the model through the same adapter a runtime worker
uses, once on the CPU (the reference) and once on ``--device``; sends scikit-learn's digits
test split through both; checks that the device's logits match the CPU's within ``--atol``;
and times a few batch sizes on the device (median of ``--repeats`` runs after a warm-up; each
batch arrives as two requests that the adapter gathers as a worker does, so the gather, the
host-to-device copies and the results back on the host are included). The "inputs staged" column says
where the adapter gathered a batch's inputs: ``pinned`` host memory (the torch adapters on a GPU:
one host copy, then one DMA copy per batch), ``pageable`` memory, or ``host`` (the device is the CPU).
It prints one table row per model. A model that cannot be loaded on the device (a framework build
without CUDA, say) is reported with the reason. A model whose framework is not installed here (no TensorFlow on the
GPU machine, say) is skipped, with the missing module named. LiteRT (``tflite``) has no NVIDIA
GPU delegate: its models run on the CPU whatever ``--device`` says, and their row says so. An
AOTInductor package runs only on the device type it was compiled for, so for a GPU the script
compiles the digits package again, for that GPU, from the same weights (a minute or so), and
loads that one on the device.

``--digits BUNDLE`` reads the test split and the weights from a bundle that
``scripts/build_model_repo.py --save-digits`` wrote, for a machine without scikit-learn (the GPU
machine: ``benchmarks/gpu_session.sh``).

Exit status: 0 when every model that could be tried loaded and matched; 1 when a model's
outputs differ; 2 when a model could not be loaded on the device (and none differed), or
when every model was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ first on the path, where modules of the harness would
# shadow the standard library's (profile.py); the project's root is what this script needs there.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.contract import LoadModel  # noqa: E402
from gateway.repository.config import load_config  # noqa: E402
from gateway.repository.layout import scan_repository  # noqa: E402
from runtimes.base import ModelLoadError, RuntimeAdapter  # noqa: E402
from runtimes.worker import ADAPTERS  # noqa: E402

#: Framework import order: TensorFlow first, so that it never sees (and imports) jax itself.
_ORDER = {"savedmodel": 0, "onnx": 1, "torchscript": 2, "torch_export": 2, "torch_aoti": 2, "jax": 3, "tflite": 4}
#: Platforms whose runtime runs on the CPU only: timed there, whatever the device asked for.
CPU_ONLY = {"tflite"}


@dataclass
class Result:
    model: str
    platform: str
    device: str
    status: str = "ok"
    staged: str = "-"
    max_diff: float | None = None
    millis: dict[int, float] = field(default_factory=dict)


def _build_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_gpu_check_build", ROOT / "scripts" / "build_model_repo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _adapter(spec: LoadModel) -> RuntimeAdapter:
    module_name, class_name = ADAPTERS[spec.platform].split(":")
    cls: type[RuntimeAdapter] = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)


def _spec(repo: Path, name: str, version: int, device: str) -> LoadModel:
    """The LoadModel a server would send for ``version`` of ``name``, placed on ``device``."""
    config = load_config(repo / name / "config.yaml", name)
    batching = config.dynamic_batching
    return LoadModel(
        key=f"{name}:{version}", model_name=name, path=str(repo / name / str(version)), platform=config.platform,
        max_batch_size=config.max_batch_size, device=device, instances=config.instances.count,
        parameters=dict(config.parameters),
        inputs=[(t.name, t.datatype) for t in config.inputs] if config.inputs else None,
        outputs=[(t.name, t.datatype) for t in config.outputs] if config.outputs else None,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes) if batching else (),
    )


def _on_device(spec: LoadModel, device: str, build: types.ModuleType, staging: Path) -> LoadModel:
    """``spec`` placed on ``device``; an AOTInductor package is first compiled for that device."""
    moved = replace(spec, device=device)
    if spec.platform != "torch_aoti" or device == "cpu":
        return moved
    version = staging / spec.model_name / "1"
    try:
        build.export_torch_aoti(build.train_digits_mlp(), version / "model.pt2", device=device.split(":")[0])
    except RuntimeError as exc:  # the compiler's own output, e.g. no CUDA toolchain for inductor
        raise ModelLoadError(f"compiling {spec.model_name} for {device} failed: {exc}") from None
    return replace(moved, path=str(version))


def _requests(x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """``x`` as the worker would see it from two clients (one, for a single row)."""
    half = (len(x) + 1) // 2
    return [{"input": x[:half]}, {"input": x[half:]}] if len(x) > 1 else [{"input": x}]


def _execute(adapter: RuntimeAdapter, x: np.ndarray) -> np.ndarray:
    return adapter.execute(adapter.gather(_requests(x)), ["logits"])["logits"]


def _run_all(adapter: RuntimeAdapter, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([_execute(adapter, x[i : i + batch]) for i in range(0, len(x), batch)])


def _staged(adapter: RuntimeAdapter, device: str, x: np.ndarray) -> str:
    """Where the adapter gathers a batch: ``pinned`` or ``pageable`` host memory, or ``host`` on the CPU."""
    if device == "cpu":
        return "host"
    gathered = adapter.gather(_requests(x[:4]))["input"]
    torch = sys.modules.get("torch")
    pinned = torch is not None and torch.from_numpy(np.ascontiguousarray(gathered)).is_pinned()
    return "pinned" if pinned else "pageable"


def check(repo: Path, device: str, batch_sizes: list[int], repeats: int, atol: float,
          digits: Path | None = None) -> list[Result]:
    build = _build_script()
    build.use_digits_bundle(digits)
    x, _ = build.digits_test_split()
    examples = {example.name for example in build.EXAMPLES.values()}
    entries = [e for e in scan_repository(repo) if e.name in examples and e.config is not None and e.versions]
    entries.sort(key=lambda e: (_ORDER.get(e.config.platform, 9) if e.config else 9, e.name))
    results = []
    staging = tempfile.TemporaryDirectory(prefix="gpu_check.")
    for entry in entries:
        assert entry.config is not None
        target = "cpu" if entry.config.platform in CPU_ONLY else device
        result = Result(entry.name, entry.config.platform, target)
        results.append(result)
        spec = _spec(repo, entry.name, max(entry.versions), "cpu")
        try:
            reference_adapter = _adapter(spec)
            reference = _run_all(reference_adapter, x, spec.max_batch_size or len(x))
            adapter = reference_adapter if target == "cpu" else _adapter(
                _on_device(spec, target, build, Path(staging.name)))
        except ImportError as exc:
            result.status = f"skipped: {entry.config.platform} needs {exc.name or exc}, not installed here"
            continue
        except ModelLoadError as exc:
            result.status = f"unavailable: {exc}"
            continue
        largest = spec.max_batch_size or len(x)
        result.staged = _staged(adapter, target, x)
        on_device = _run_all(adapter, x, largest)
        result.max_diff = float(np.max(np.abs(on_device - reference)))
        if not np.allclose(on_device, reference, rtol=0, atol=atol):
            result.status = f"MISMATCH (atol {atol})"
        for size in batch_sizes:
            if size > largest:
                continue
            batch = np.ascontiguousarray(np.resize(x, (size, x.shape[1])))
            _execute(adapter, batch)  # warm-up: allocators, lazy initialisation
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                _execute(adapter, batch)
                times.append(time.perf_counter() - started)
            result.millis[size] = statistics.median(times) * 1000
        adapter.close()
        if adapter is not reference_adapter:
            reference_adapter.close()
    staging.cleanup()
    return results


def table(results: list[Result], batch_sizes: list[int]) -> str:
    head = ["model", "platform", "device", "inputs staged", "status", "max |diff| vs cpu",
            *(f"ms @ batch {b}" for b in batch_sizes), f"rows/s @ batch {batch_sizes[-1]}"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        rate = f"{batch_sizes[-1] / r.millis[batch_sizes[-1]] * 1000:,.0f}" if batch_sizes[-1] in r.millis else "-"
        rows.append([r.model, r.platform, r.device, r.staged, r.status,
                     "-" if r.max_diff is None else f"{r.max_diff:.2e}",
                     *(f"{r.millis[b]:.3f}" if b in r.millis else "-" for b in batch_sizes), rate])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda:0", help="cpu or cuda:N (default: %(default)s)")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo",
                        help="model repository (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,8,64", help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per batch size (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest allowed |device - cpu| per logit (default: %(default)s; GPUs may use TF32)")
    parser.add_argument("--digits", type=Path, metavar="BUNDLE",
                        help="the digits test split and weights from BUNDLE (scripts/build_model_repo.py "
                             "--save-digits) instead of scikit-learn")
    args = parser.parse_args(argv)
    batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    results = check(args.repo, args.device, batch_sizes, args.repeats, args.atol, args.digits)
    if not results:
        print(f"{args.repo}: no models (build them with `make model_repo`)", file=sys.stderr)
        return 2
    print(table(results, batch_sizes))
    if any(r.status.startswith("MISMATCH") for r in results):
        return 1
    tried = [r for r in results if not r.status.startswith("skipped")]
    return 2 if not tried or any(r.status != "ok" for r in tried) else 0


if __name__ == "__main__":
    sys.exit(main())
