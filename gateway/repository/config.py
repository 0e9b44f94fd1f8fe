"""The schema of ``<model>/config.yaml``, validated with pydantic.

Field names follow Triton's model configuration where one exists, so a Triton user reads
a config without a manual. Every validation error names the file and the field.
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.protocol.datatypes import DATATYPES

Platform = Literal["onnx", "torchscript", "torch_export", "torch_aoti", "savedmodel", "jax", "tflite"]

#: Triton's platform names, accepted as aliases so existing configs carry over.
PLATFORM_ALIASES: dict[str, Platform] = {
    "onnxruntime_onnx": "onnx",
    "pytorch_libtorch": "torchscript",
    "tensorflow_savedmodel": "savedmodel",
}

#: The framework (and so the worker process) that runs each platform.
FRAMEWORK_OF: dict[Platform, str] = {
    "onnx": "onnxruntime",
    "torchscript": "torch",
    "torch_export": "torch",
    "torch_aoti": "torch",
    "savedmodel": "tensorflow",
    "jax": "jax",
    "tflite": "tflite",
}

#: The platform string reported in model metadata, in Triton's ``<project>_<format>`` style;
#: ``tflite`` is what Triton reports for its TFLite backend (named after the format, like ours).
METADATA_PLATFORM: dict[Platform, str] = {
    "onnx": "onnxruntime_onnx",
    "torchscript": "pytorch_libtorch",
    "torch_export": "pytorch_torch_export",
    "torch_aoti": "pytorch_torch_aoti",
    "savedmodel": "tensorflow_savedmodel",
    "jax": "jax_export",
    "tflite": "tflite",
}

#: The backend named in the model config response, as Triton names its backends (jax is ours;
#: Triton's TFLite backend is ``armnn_tflite``, after the ArmNN delegate it adds, which we do not).
TRITON_BACKEND: dict[Platform, str] = {
    "onnx": "onnxruntime",
    "torchscript": "pytorch",
    "torch_export": "pytorch",
    "torch_aoti": "pytorch",
    "savedmodel": "tensorflow",
    "jax": "jax",
    "tflite": "tflite",
}

_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    """An input or output: shape excludes the batch dimension when max_batch_size > 0."""

    name: Annotated[str, Field(min_length=1)]
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"'{value}' is not one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError("dimensions are positive, or -1 for a variable dimension")
        return value


class InstancesConfig(_Strict):
    """How many copies of the model execute in parallel, and where."""

    count: Annotated[int, Field(ge=1, le=64)] = 1
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be 'cpu' or 'cuda:N'")
        return value


class LatestPolicy(_Strict):
    num_versions: Annotated[int, Field(ge=1)] = 1


class SpecificPolicy(_Strict):
    versions: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class VersionPolicy(_Strict):
    """Which version folders are served: the latest N (default 1), all, or a list."""

    latest: LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> "VersionPolicy":
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of latest, all, specific (got {', '.join(chosen)})")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, ascending."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific.versions)]
        latest = self.latest.num_versions if self.latest is not None else 1
        return ordered[-latest:]


class DynamicBatchingConfig(_Strict):
    """Queueing and batching knobs, read by the model's scheduler."""

    max_queue_delay_ms: Annotated[float, Field(ge=0)] = 0.0
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = []
    max_queue_size: Annotated[int, Field(ge=0)] = 0
    default_timeout_ms: Annotated[float, Field(ge=0)] = 0.0
    priority_levels: Annotated[int, Field(ge=1)] = 1
    default_priority: Annotated[int, Field(ge=1)] = 1


def plain_name(value: str, what: str) -> str:
    """``value`` as one file or folder name: a path could reach outside the repository."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"'{value}' must be {what}, not a path")
    return value


class WarmupInputConfig(_Strict):
    """How a warm-up sample fills one input: zeros, random values, or a raw file from ``<model>/warmup/``.

    ``datatype`` and ``shape`` (without the batch dimension) default to the model's own.
    """

    zero: bool | None = None
    random: bool | None = None
    file: str | None = None
    datatype: str | None = None
    shape: list[int] | None = None

    @field_validator("file")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        return value if value is None else plain_name(value, "a file name in the model's warmup/ folder")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str | None) -> str | None:
        if value is not None and value not in DATATYPES:
            raise ValueError(f"'{value}' is not one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _fixed_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(d < 1 for d in value):
            raise ValueError("warm-up dimensions are positive (a sample has one concrete shape)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "WarmupInputConfig":
        chosen = [k for k in ("zero", "random") if getattr(self, k)] + (["file"] if self.file else [])
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of zero: true, random: true, file: NAME (got {chosen or 'none'})")
        return self

    @property
    def source(self) -> str:
        return "file" if self.file else "zero" if self.zero else "random"


class WarmupConfig(_Strict):
    """One warm-up request (Triton's ``model_warmup``), run ``count`` times before the version is ready."""

    name: str = ""
    batch_size: Annotated[int, Field(ge=1)] = 1
    count: Annotated[int, Field(ge=1)] = 1
    inputs: Annotated[dict[str, WarmupInputConfig], Field(min_length=1)]


class ModelConfig(_Strict):
    """A model's config.yaml. ``inputs``/``outputs`` may be omitted where the format carries them."""

    name: str | None = None
    platform: Platform
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    instances: InstancesConfig = InstancesConfig()
    version_policy: VersionPolicy = VersionPolicy()
    dynamic_batching: DynamicBatchingConfig | None = None
    parameters: dict[str, str | int | float | bool] = {}
    #: The model file (or folder) inside each version folder; None: the platform's default name.
    default_model_filename: str | None = None
    #: Requests run through the model before each version turns ready.
    warmup: list[WarmupConfig] = []

    @field_validator("platform", mode="before")
    @classmethod
    def _alias(cls, value: object) -> object:
        return PLATFORM_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("default_model_filename")
    @classmethod
    def _plain_filename(cls, value: str | None) -> str | None:
        """A name inside the version folder: a path could reach outside the repository."""
        return value if value is None else plain_name(value, "a file or folder name inside the version folder")

    @model_validator(mode="after")
    def _unique_names(self) -> "ModelConfig":
        for kind in ("inputs", "outputs"):
            tensors = getattr(self, kind) or []
            names = [t.name for t in tensors]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}: duplicate names {duplicates}")
        return self

    @model_validator(mode="after")
    def _warmup_batches(self) -> "ModelConfig":
        for index, sample in enumerate(self.warmup):
            limit = self.max_batch_size or 1
            what = "max_batch_size" if self.max_batch_size else "the 1 row of a model that does not batch"
            if sample.batch_size > limit:
                raise ValueError(f"warmup[{index}].batch_size: {sample.batch_size} is over {what} ({limit})")
        return self

    @property
    def framework(self) -> str:
        return FRAMEWORK_OF[self.platform]


def load_config(path: Path, model_name: str) -> ModelConfig:
    """Read and validate one config.yaml; the name, if given, must match the folder."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        config = ModelConfig.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    if config.name is not None and config.name != model_name:
        raise ConfigError(f"{path}: name: '{config.name}' does not match the folder '{model_name}'")
    return config
