"""A model version's effective configuration in the JSON shape of Triton's ModelConfig.

What ``GET /v2/models/{m}/config`` and gRPC ``ModelConfig`` answer, so Triton's tools and
clients read our configs as their own.
"""

from typing import Any

from gateway.contract import TensorSpec
from gateway.repository.config import METADATA_PLATFORM, TRITON_BACKEND, WarmupConfig
from gateway.repository.repository import ModelVersion


def triton_config(mv: ModelVersion) -> dict[str, Any]:
    config = mv.config
    signature = mv.signature
    inputs = signature.inputs if signature else ()
    outputs = signature.outputs if signature else ()
    policy: dict[str, Any]
    vp = config.version_policy
    if vp.all is not None:
        policy = {"all": {}}
    elif vp.specific is not None:
        policy = {"specific": {"versions": vp.specific.versions}}
    else:
        policy = {"latest": {"num_versions": vp.latest.num_versions if vp.latest else 1}}
    device = config.instances.device
    group: dict[str, Any] = {"name": f"{mv.name}_0", "count": config.instances.count,
                             "kind": "KIND_GPU" if device.startswith("cuda:") else "KIND_CPU"}
    if device.startswith("cuda:"):
        group["gpus"] = [int(device.split(":")[1])]
    document: dict[str, Any] = {
        "name": mv.name,
        "platform": METADATA_PLATFORM[config.platform],
        "backend": TRITON_BACKEND[config.platform],
        "max_batch_size": config.max_batch_size,
        "input": [_triton_tensor(t) for t in inputs],
        "output": [_triton_tensor(t) for t in outputs],
        "version_policy": policy,
        "instance_group": [group],
        "parameters": {k: {"string_value": str(v)} for k, v in config.parameters.items()},
    }
    if config.default_model_filename:
        document["default_model_filename"] = config.default_model_filename
    if config.warmup:
        document["model_warmup"] = [_triton_warmup(sample, mv) for sample in config.warmup]
    batching = config.dynamic_batching
    if batching is not None:
        document["dynamic_batching"] = {
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority,
            "default_queue_policy": {
                "default_timeout_microseconds": int(batching.default_timeout_ms * 1000),
                "max_queue_size": batching.max_queue_size,
            },
        }
    return document


def _triton_warmup(sample: WarmupConfig, mv: ModelVersion) -> dict[str, Any]:
    specs = {t.name: t for t in mv.signature.inputs} if mv.signature else {}
    inputs: dict[str, Any] = {}
    for name, given in sample.inputs.items():
        spec = specs.get(name)
        datatype = given.datatype or (spec.datatype if spec else "FP32")
        item: dict[str, Any] = {"data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}",
                                "dims": given.shape if given.shape is not None else list(spec.shape if spec else ())}
        if given.file:
            item["input_data_file"] = given.file
        else:
            item["zero_data" if given.zero else "random_data"] = True
        inputs[name] = item
    return {"name": sample.name, "batch_size": sample.batch_size, "count": sample.count, "inputs": inputs}


def _triton_tensor(spec: TensorSpec) -> dict[str, Any]:
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": list(spec.shape)}
