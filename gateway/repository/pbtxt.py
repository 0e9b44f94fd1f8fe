"""Triton's ``<model>/config.pbtxt``, read as Triton reads it and turned into our ModelConfig.

The file is protobuf text format; it is parsed against our own copy of Triton's
``ModelConfig`` message (proto/model_config.proto), so field names, enum names and syntax
are exactly Triton's. The message is then converted into the same pydantic ModelConfig a
config.yaml produces, so nothing downstream knows which file a model came from.

Rule: every field either maps onto ModelConfig with Triton's meaning, or is refused with an
error naming the file and the field. Nothing is dropped quietly. The defaults that differ
from Triton's (an unbounded queue, KIND_AUTO, ...) are listed in README "Triton repositories".
"""

import json
import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from pydantic import ValidationError

from gateway.grpc.generated import model_config_pb2 as pb
from gateway.repository.config import FRAMEWORK_OF, ConfigError, ModelConfig, Platform
from gateway.repository.pt2 import is_aoti_package

CONFIG_FILE = "config.pbtxt"

#: Triton platform names (and our own) -> our platform.
PLATFORMS: dict[str, Platform] = {
    "onnxruntime_onnx": "onnx",
    "pytorch_libtorch": "torchscript",
    "tensorflow_savedmodel": "savedmodel",
    "torch_export": "torch_export",
    "torch_aoti": "torch_aoti",
    "jax": "jax",
    "tflite": "tflite",
    "onnx": "onnx",
    "torchscript": "torchscript",
    "savedmodel": "savedmodel",
}

#: Triton backend names -> the platform a backend alone means.
BACKENDS: dict[str, Platform] = {
    "onnxruntime": "onnx",
    "pytorch": "torchscript",
    "tensorflow": "savedmodel",
    "jax": "jax",
    "tflite": "tflite",
    "armnn_tflite": "tflite",
}

#: Model file suffix -> platform, for a config that names neither platform nor backend.
_SUFFIX_PLATFORMS: dict[str, Platform] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pt2": "torch_export",
    ".savedmodel": "savedmodel",
    ".jax": "jax",
    ".tflite": "tflite",
}

#: Runtime parameters the adapters read, and Triton backends' names for the same settings
#: (ONNX Runtime backend: lower case; PyTorch backend: upper case; TFLite backend: tflite_num_threads).
PARAMETER_NAMES: dict[str, str] = {
    "intra_op_threads": "intra_op_threads",
    "inter_op_threads": "inter_op_threads",
    "signature_name": "signature_name",
    "raw_quantized": "raw_quantized",
    "pad_batches_to": "pad_batches_to",
    "linear_kernel": "linear_kernel",
    "intra_op_thread_count": "intra_op_threads",
    "inter_op_thread_count": "inter_op_threads",
    "INTRA_OP_THREAD_COUNT": "intra_op_threads",
    "INTER_OP_THREAD_COUNT": "inter_op_threads",
    "tflite_num_threads": "intra_op_threads",
}

#: Where each message sits in a config, to name a field the parser refused.
_MESSAGE_PATHS = {
    "ModelConfig": "",
    "ModelInput": "input.",
    "ModelOutput": "output.",
    "ModelTensorReshape": "reshape.",
    "ModelInstanceGroup": "instance_group.",
    "ModelDynamicBatching": "dynamic_batching.",
    "ModelQueuePolicy": "dynamic_batching.default_queue_policy.",
    "ModelVersionPolicy": "version_policy.",
    "ModelParameter": "parameters.value.",
    "ModelWarmup": "model_warmup.",
    "Input": "model_warmup.inputs.value.",
}

#: Triton fields our proto does not define, with why they are refused.
_NOT_SUPPORTED = {
    "runtime": "custom backend libraries are not supported",
    "optimization": "optimization settings (execution accelerators, graph level, CUDA graphs, ...) are not "
                    "supported; remove the block",
    "sequence_batching": "sequence batching (stateful models) is not supported",
    "ensemble_scheduling": "ensembles are not supported",
    "cc_model_filenames": "per compute capability model files are not supported; use default_model_filename",
    "metric_tags": "custom metric labels are not supported",
    "batch_input": "ragged batching is not supported",
    "batch_output": "ragged batching is not supported",
    "model_operations": "custom operation libraries are not supported",
    "model_repository_agents": "repository agents are not supported",
    "model_metrics": "per-model histogram buckets are not supported",
    "rate_limiter": "the rate limiter is not supported",
    "secondary_devices": "secondary devices are not supported",
}

#: InstancesConfig's bound on instances.count.
_MAX_INSTANCES = 64

_PARSE_UNKNOWN_FIELD = re.compile(r'Message type "inference\.(\w+)" has no field named "(\w+)"')
_PARSE_LOCATION = re.compile(r"^(\d+):(\d+) : (?:'[^\n]*': )?")
_INDEXED_NAME = re.compile(r"^.+__(\d+)$")


class _Refused(Exception):
    """One field that cannot be used: the caller adds the file."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


def load_pbtxt(path: Path, model_name: str) -> ModelConfig:
    """Read one config.pbtxt; like load_config, every error names the file and the field."""
    message = parse_pbtxt(path)
    if message.name and message.name != model_name:
        raise ConfigError(f"{path}: name: '{message.name}' does not match the folder '{model_name}'")
    try:
        document = to_document(message, path.parent)
    except _Refused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return ModelConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_pydantic_problems(exc)}") from None


def load_override(text: str, folder: Path, model_name: str) -> ModelConfig:
    """A load request's ``config`` parameter: Triton's ModelConfig as JSON, used instead of the folder's file.

    It is read into the same ModelConfig message config.pbtxt is, and converted the same way, so
    the same fields are accepted and refused. Errors start with Triton's "Invalid config override".
    """
    prefix = f"Invalid config override for model '{model_name}'"
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{prefix}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{prefix}: the config must be a JSON object (Triton's ModelConfig), "
                          f"not {type(document).__name__}")
    try:
        message = json_format.ParseDict(document, pb.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"{prefix}: {_json_problem(str(exc))}") from None
    if message.name and message.name != model_name:
        raise ConfigError(f"{prefix}: name: '{message.name}' is not the model's name '{model_name}'")
    try:
        return ModelConfig.model_validate(to_document(message, folder))
    except _Refused as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{prefix}: {_pydantic_problems(exc)}") from None


def _json_problem(text: str) -> str:
    """json_format's message, the unknown field named as in a config, without the list of known ones."""
    unknown = _PARSE_UNKNOWN_FIELD.search(text)
    if unknown is None:
        return text
    message, field = unknown.groups()
    name = _MESSAGE_PATHS.get(message, f"{message}.") + field
    return f"{name}: {_NOT_SUPPORTED.get(field, 'TensorGate does not read this field (misspelled, or not supported)')}"


def parse_pbtxt(path: Path) -> pb.ModelConfig:
    """The file as Triton's ModelConfig message; syntax errors carry the line and column."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}:{_parse_problem(str(exc))}") from None


def _parse_problem(text: str) -> str:
    """protobuf's message, with the field's place in the config and why it is refused."""
    location = _PARSE_LOCATION.match(text)
    where = f"{location.group(1)}:{location.group(2)}: " if location else " "
    rest = text[location.end():] if location else text
    unknown = _PARSE_UNKNOWN_FIELD.search(rest)
    if unknown is None:
        return where + rest
    message, field = unknown.groups()
    name = _MESSAGE_PATHS.get(message, f"{message}.") + field
    reason = _NOT_SUPPORTED.get(field, "TensorGate does not read this field (misspelled, or not supported)")
    return f"{where}{name}: {reason}"


def to_document(config: pb.ModelConfig, folder: Path) -> dict[str, Any]:
    """The config.yaml-shaped mapping for ``config``; raises _Refused for what cannot be served."""
    _refuse_unsupported_top_level(config)
    platform = _platform(config, folder)
    document: dict[str, Any] = {
        "platform": platform,
        "max_batch_size": _max_batch_size(config.max_batch_size),
        "instances": _instances(list(config.instance_group)),
        "version_policy": _version_policy(config),
        "parameters": _parameters(config),
    }
    ordered = FRAMEWORK_OF[platform] == "torch"
    inputs = _unique([_input(t, i) for i, t in enumerate(config.input)], "input")
    outputs = _unique([_output(t, i) for i, t in enumerate(config.output)], "output")
    if inputs:
        document["inputs"] = _triton_order(inputs) if ordered else inputs
    if outputs:
        document["outputs"] = _triton_order(outputs) if ordered else outputs
    if config.HasField("dynamic_batching"):
        document["dynamic_batching"] = _dynamic_batching(config.dynamic_batching, config.max_batch_size)
    if config.default_model_filename:
        document["default_model_filename"] = config.default_model_filename
    if config.model_warmup:
        document["warmup"] = [_warmup(sample, i) for i, sample in enumerate(config.model_warmup)]
    if config.name:
        document["name"] = config.name
    return document


def _refuse_unsupported_top_level(config: pb.ModelConfig) -> None:
    """Fields our proto parses only so that setting them gets a precise refusal."""
    if config.model_transaction_policy.decoupled:
        raise _Refused("model_transaction_policy.decoupled",
                       "decoupled models (several responses per request) are not supported")
    if config.response_cache.enable:
        raise _Refused("response_cache.enable", "the response cache is not supported")


def _warmup(sample: pb.ModelWarmup, index: int) -> dict[str, Any]:
    """One model_warmup entry: Triton's names and rules (data_type and dims given, one data choice per input)."""
    field = f"model_warmup[{index}]"
    if sample.batch_size < 1:
        raise _Refused(f"{field}.batch_size", "must be at least 1 (1 for a model that does not batch)")
    if not sample.inputs:
        raise _Refused(f"{field}.inputs", "lists no input")
    inputs: dict[str, Any] = {}
    for name in sorted(sample.inputs):
        given = sample.inputs[name]
        where = f"{field}.inputs['{name}']"
        if given.data_type == pb.TYPE_INVALID:
            raise _Refused(f"{where}.data_type", "is required")
        if not given.dims or any(d < 1 for d in given.dims):
            raise _Refused(f"{where}.dims", f"{list(given.dims)}: give the sample's shape (without the batch "
                                            f"dimension), every dimension positive")
        datatype = _enum_name(pb.DataType, given.data_type, f"{where}.data_type").removeprefix("TYPE_")
        choice = given.WhichOneof("input_data_type")
        if choice is None:
            raise _Refused(where, "set one of zero_data, random_data or input_data_file")
        source: dict[str, Any] = ({"file": given.input_data_file} if choice == "input_data_file"
                                  else {"zero" if choice == "zero_data" else "random": True})
        inputs[name] = {"datatype": "BYTES" if datatype == "STRING" else datatype, "shape": list(given.dims),
                        **source}
    return {"name": sample.name, "batch_size": sample.batch_size, "count": sample.count or 1, "inputs": inputs}


def _platform(config: pb.ModelConfig, folder: Path) -> Platform:
    """platform and/or backend as Triton resolves them; with neither, the model file decides."""
    platform = _named(config.platform, PLATFORMS, "platform") if config.platform else None
    backend = _named(config.backend, BACKENDS, "backend") if config.backend else None
    if platform and backend and FRAMEWORK_OF[platform] != FRAMEWORK_OF[backend]:
        raise _Refused("backend", f"'{config.backend}' does not run platform '{config.platform}'")
    chosen = platform or backend or _platform_from_files(folder, config.default_model_filename)
    if chosen is None:
        wanted = config.default_model_filename or ", ".join(f"model{s}" for s in _SUFFIX_PLATFORMS)
        raise _Refused("platform", f"neither platform nor backend is set, and the version folders do not "
                                   f"tell (looked for {wanted})")
    return chosen


def _named(value: str, table: dict[str, Platform], field: str) -> Platform:
    if value not in table:
        raise _Refused(field, f"'{value}' is not supported (supported: {', '.join(table)})")
    return table[value]


def _platform_from_files(folder: Path, filename: str) -> Platform | None:
    """Triton's auto-complete: the model file in the version folders names the backend (if just one).

    A ``.pt2`` is either a torch.export program or an AOTInductor package: its contents tell.
    """
    names = [filename] if filename else [f"model{suffix}" for suffix in _SUFFIX_PLATFORMS]
    versions = [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit()]
    found = {_file_platform(version / name) for name in names if Path(name).suffix in _SUFFIX_PLATFORMS
             for version in versions if (version / name).exists()}
    return found.pop() if len(found) == 1 else None


def _file_platform(path: Path) -> Platform:
    platform = _SUFFIX_PLATFORMS[path.suffix]
    return "torch_aoti" if platform == "torch_export" and is_aoti_package(path) else platform


def _max_batch_size(value: int) -> int:
    if value < 0:
        raise _Refused("max_batch_size", f"{value} is negative (0: the model does not batch)")
    return value


def _tensor_field(kind: str, index: int, name: str) -> str:
    return f"{kind}['{name}']" if name else f"{kind}[{index}]"


def _tensor(tensor: pb.ModelInput | pb.ModelOutput, kind: str, index: int) -> dict[str, Any]:
    """name, datatype and dims of an input or output, checked as Triton checks them."""
    field = _tensor_field(kind, index, tensor.name)
    if not tensor.name:
        raise _Refused(f"{field}.name", "is required")
    if tensor.data_type == pb.TYPE_INVALID:
        raise _Refused(f"{field}.data_type", "is required (TYPE_FP32, TYPE_INT64, TYPE_STRING, ...)")
    if not tensor.dims:
        raise _Refused(f"{field}.dims", "is required (without the batch dimension; -1 for a variable one)")
    if any(d < -1 or d == 0 for d in tensor.dims):
        raise _Refused(f"{field}.dims", f"{list(tensor.dims)}: dimensions are positive, or -1 for a variable one")
    if tensor.HasField("reshape"):
        raise _Refused(f"{field}.reshape", "reshaping between the request and the model is not supported; "
                                           "give the model the shape that dims describe")
    if tensor.is_shape_tensor:
        raise _Refused(f"{field}.is_shape_tensor", "shape tensors are not supported")
    if tensor.is_non_linear_format_io:
        raise _Refused(f"{field}.is_non_linear_format_io", "non-linear tensor formats are not supported")
    datatype = _enum_name(pb.DataType, tensor.data_type, f"{field}.data_type").removeprefix("TYPE_")
    return {"name": tensor.name, "datatype": "BYTES" if datatype == "STRING" else datatype,
            "shape": list(tensor.dims)}


def _input(tensor: pb.ModelInput, index: int) -> dict[str, Any]:
    field = _tensor_field("input", index, tensor.name)
    if tensor.optional:
        raise _Refused(f"{field}.optional", "optional inputs are not supported: every input is required")
    if tensor.allow_ragged_batch:
        raise _Refused(f"{field}.allow_ragged_batch", "ragged batching is not supported")
    layout = _enum_name(pb.ModelInput.Format, tensor.format, f"{field}.format")
    if tensor.format != pb.ModelInput.FORMAT_NONE and len(tensor.dims) != 3:
        raise _Refused(f"{field}.format", f"{layout} needs 3 dims, not {list(tensor.dims)}")
    return _tensor(tensor, "input", index)


def _output(tensor: pb.ModelOutput, index: int) -> dict[str, Any]:
    if tensor.label_filename:
        raise _Refused(f"{_tensor_field('output', index, tensor.name)}.label_filename",
                       "the classification extension is not supported; remove label_filename")
    return _tensor(tensor, "output", index)


def _unique(tensors: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    names = [t["name"] for t in tensors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _Refused(kind, f"duplicate names {duplicates}")
    return tensors


def _triton_order(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Triton's PyTorch convention: ``NAME__<i>`` is forward's i-th argument (or result).

    Our torch adapters bind by position in config order, so the config is put in index order.
    """
    matches = [_INDEXED_NAME.match(t["name"]) for t in tensors]
    indices = [int(m.group(1)) for m in matches if m]
    if len(indices) != len(tensors) or len(set(indices)) != len(indices):
        return tensors
    return [tensor for _, tensor in sorted(zip(indices, tensors, strict=True), key=lambda pair: pair[0])]


def _instances(groups: list[pb.ModelInstanceGroup]) -> dict[str, Any]:
    """All groups as one {count, device}: groups on the same device add up; devices must agree."""
    if not groups:
        return {"count": 1, "device": "cpu"}
    placed = [_group(group, i) for i, group in enumerate(groups)]
    devices = sorted({device for _, device in placed})
    if len(devices) > 1:
        raise _Refused("instance_group", f"groups on different devices ({', '.join(devices)}): TensorGate runs a "
                                         f"model version on one device")
    count = sum(count for count, _ in placed)
    if count > _MAX_INSTANCES:
        raise _Refused("instance_group", f"{count} instances in all; at most {_MAX_INSTANCES}")
    return {"count": count, "device": devices[0]}


def _group(group: pb.ModelInstanceGroup, index: int) -> tuple[int, str]:
    """(count, device) of one group. KIND_AUTO without gpus is the CPU: the gateway does not probe GPUs."""
    field = f"instance_group[{index}]"
    if group.count < 0:
        raise _Refused(f"{field}.count", f"{group.count} is negative")
    for name in ("profile", "passive", "host_policy"):
        if getattr(group, name):
            raise _Refused(f"{field}.{name}", "is not supported")
    kind = group.kind
    _enum_name(pb.ModelInstanceGroup.Kind, kind, f"{field}.kind")
    if kind == pb.ModelInstanceGroup.KIND_MODEL:
        raise _Refused(f"{field}.kind", "KIND_MODEL (placement left to the model) is not supported; "
                                        "use KIND_CPU or KIND_GPU")
    if kind == pb.ModelInstanceGroup.KIND_CPU and group.gpus:
        raise _Refused(f"{field}.gpus", "a KIND_CPU group cannot list gpus")
    if len(group.gpus) > 1:
        raise _Refused(f"{field}.gpus", f"{list(group.gpus)}: TensorGate runs a model version on one device; "
                                        f"list one GPU")
    on_gpu = kind == pb.ModelInstanceGroup.KIND_GPU or bool(group.gpus)
    device = f"cuda:{group.gpus[0] if group.gpus else 0}" if on_gpu else "cpu"
    return group.count or 1, device


def _enum_name(enum: Any, value: int, field: str) -> str:
    """The enum value's name; text format lets a bare number through, Triton refuses unknown ones."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise _Refused(field, f"{value} is not one of {', '.join(enum.keys())}") from None


def _version_policy(config: pb.ModelConfig) -> dict[str, Any]:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": {}}
    if choice == "specific":
        if not policy.specific.versions:
            raise _Refused("version_policy.specific.versions", "lists no version")
        if any(v < 0 for v in policy.specific.versions):
            raise _Refused("version_policy.specific.versions", "versions are non-negative")
        return {"specific": {"versions": list(policy.specific.versions)}}
    if choice is None:
        return {}  # Triton's default and ours: the latest version
    if policy.latest.num_versions == 0:
        raise _Refused("version_policy.latest.num_versions", "must be at least 1")
    return {"latest": {"num_versions": policy.latest.num_versions}}


def _parameters(config: pb.ModelConfig) -> dict[str, str]:
    """Runtime parameters, under our names; a key no adapter reads would be ignored, so it is refused."""
    parameters: dict[str, str] = {}
    for key in sorted(config.parameters):
        ours = PARAMETER_NAMES.get(key)
        if ours is None:
            raise _Refused(f"parameters['{key}']", f"no runtime reads this parameter (known: "
                                                   f"{', '.join(PARAMETER_NAMES)})")
        value = config.parameters[key].string_value
        if ours.endswith("_threads") and not (value.isdigit() and int(value) > 0):
            raise _Refused(f"parameters['{key}']", f"'{value}' is not a positive number of threads")
        if ours in parameters:
            raise _Refused(f"parameters['{key}']", f"sets {ours} a second time")
        parameters[ours] = value
    return parameters


def _dynamic_batching(batching: pb.ModelDynamicBatching, max_batch_size: int) -> dict[str, Any]:
    """Triton's dynamic_batching (microseconds, levels counted from 0 = off) in our units."""
    field = "dynamic_batching"
    for size in batching.preferred_batch_size:
        if size < 1 or (max_batch_size > 0 and size > max_batch_size):
            raise _Refused(f"{field}.preferred_batch_size",
                           f"{size} is not between 1 and max_batch_size ({max_batch_size})")
    if batching.preserve_ordering:
        raise _Refused(f"{field}.preserve_ordering", "is not supported: each response is sent when its batch "
                                                     "finishes")
    if batching.priority_queue_policy:
        raise _Refused(f"{field}.priority_queue_policy", "per-level queue policies are not supported; use "
                                                         "default_queue_policy")
    levels, default_level = batching.priority_levels, batching.default_priority_level
    if levels and not 1 <= default_level <= levels:
        raise _Refused(f"{field}.default_priority_level", f"{default_level} is not between 1 and priority_levels "
                                                          f"({levels})")
    if not levels and default_level:
        raise _Refused(f"{field}.default_priority_level", "is set, but priority_levels is 0 (priorities off)")
    return {
        "max_queue_delay_ms": batching.max_queue_delay_microseconds / 1000,
        "preferred_batch_sizes": list(batching.preferred_batch_size),
        "priority_levels": levels or 1,
        "default_priority": default_level or 1,
        **_queue_policy(batching.default_queue_policy),
    }


def _queue_policy(policy: pb.ModelQueuePolicy) -> dict[str, Any]:
    """max_queue_size 0 is Triton's unbounded queue; ours stays bounded (0 = the default size)."""
    _enum_name(pb.ModelQueuePolicy.TimeoutAction, policy.timeout_action,
               "dynamic_batching.default_queue_policy.timeout_action")
    if policy.timeout_action == pb.ModelQueuePolicy.DELAY:
        raise _Refused("dynamic_batching.default_queue_policy.timeout_action",
                       "DELAY is not supported: a request that waited past its timeout fails (REJECT)")
    return {"max_queue_size": policy.max_queue_size,
            "default_timeout_ms": policy.default_timeout_microseconds / 1000}


_YAML_TO_PBTXT = {"inputs": "input", "outputs": "output", "shape": "dims", "instances": "instance_group",
                  "preferred_batch_sizes": "preferred_batch_size", "warmup": "model_warmup",
                  "file": "input_data_file", "datatype": "data_type"}


def _pydantic_problems(exc: ValidationError) -> str:
    """What pydantic still refused, with the locations spelled in config.pbtxt's field names."""
    return "; ".join(
        f"{'.'.join(_pbtxt_name(str(p), i) for i, p in enumerate(err['loc'])) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def _pbtxt_name(name: str, depth: int) -> str:
    """config.pbtxt's name for one step of a pydantic location (``inputs`` is ``input`` only at the top)."""
    if depth and name in ("inputs", "outputs"):
        return name
    return _YAML_TO_PBTXT.get(name, name)
