"""The benchmark model repository: model files built once (cached), configs written per run.

``benchmarks/model_repo/`` (git-ignored) caches every built model as a servable repository
folder (``<served name>/config.yaml`` with the default options and ``<served name>/1/<file>``).
A run serves a fresh folder that holds only the models it asks for: their config.yaml
(written with the run's batching, thread and instance options) and a link to the cached
version folder. ``tensorgate serve --model-repo benchmarks/model_repo`` also works on the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.models import MODEL_FILES, ModelSpec, build

CACHE = Path(__file__).resolve().parent / "model_repo"
VERSION = "1"
STAMP_FILE = ".built"


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """What a run's config.yaml states: the numbers the results file must quote."""

    max_batch_size: int = 64
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 1024
    instances: int = 1
    #: The framework's threads per instance (ONNX Runtime intra-op, torch set_num_threads).
    threads: int = 1
    #: Where the instances run: ``cpu`` or ``cuda:N`` (the offline measurement runs there too).
    device: str = "cpu"

    def describe(self) -> str:
        return (f"max_batch_size {self.max_batch_size}, dynamic_batching max_queue_delay_ms "
                f"{self.max_queue_delay_ms:g}, max_queue_size {self.max_queue_size}, instances {self.instances} "
                f"on {self.device}, intra_op_threads {self.threads}, inter_op_threads 1")


def config_text(spec: ModelSpec, fmt: str, options: ServingOptions) -> str:
    """A config.yaml for ``spec`` in ``fmt``; inputs and outputs are listed (TorchScript needs them)."""
    return (
        f"platform: {fmt}\n"
        f"max_batch_size: {options.max_batch_size}\n"
        f"inputs: [{{name: {spec.input_name}, datatype: FP32, shape: [{spec.input_size}]}}]\n"
        f"outputs: [{{name: {spec.output_name}, datatype: FP32, shape: [{spec.output_size}]}}]\n"
        f"instances: {{count: {options.instances}, device: {options.device}}}\n"
        f"parameters: {{intra_op_threads: {options.threads}, inter_op_threads: 1}}\n"
        f"dynamic_batching: {{max_queue_delay_ms: {options.max_queue_delay_ms:g}, "
        f"max_queue_size: {options.max_queue_size}}}\n"
    )


def ensure_built(spec: ModelSpec, fmt: str, cache: Path = CACHE) -> Path:
    """The cached version folder of ``spec`` in ``fmt``, built first if missing or stale."""
    folder = cache / spec.served_name(fmt)
    version = folder / VERSION
    stamp = version / STAMP_FILE
    model_file = version / MODEL_FILES[fmt]
    if not (model_file.is_file() and stamp.is_file() and stamp.read_text() == spec.stamp()):
        stamp.unlink(missing_ok=True)
        build(spec, fmt, model_file)
        stamp.write_text(spec.stamp())
        (folder / "config.yaml").write_text(config_text(spec, fmt, ServingOptions()))
    return version


def prepare_run_repo(root: Path, models: list[tuple[ModelSpec, str]], options: ServingOptions,
                     cache: Path = CACHE) -> Path:
    """A repository at ``root`` serving just ``models`` with ``options``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for spec, fmt in models:
        version = ensure_built(spec, fmt, cache)
        folder = root / spec.served_name(fmt)
        folder.mkdir(exist_ok=True)
        (folder / "config.yaml").write_text(config_text(spec, fmt, options))
        link = folder / VERSION
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(version.resolve(), target_is_directory=True)
    return root
