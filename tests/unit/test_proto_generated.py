"""The generated gRPC modules are fresh and wire-compatible with Triton's clients.

``tritonclient.grpc`` and ``gateway.grpc.generated`` both register ``inference.*``
messages in protobuf's default descriptor pool, so they can never be imported in
the same process. Everything that needs tritonclient runs in a subprocess; bytes
and descriptor dumps cross the process boundary through files and stdout.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIR = REPO_ROOT / "gateway" / "grpc" / "generated"


def _load_gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", REPO_ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_proto = _load_gen_proto()


def _owned_files(directory: Path) -> dict[str, bytes]:
    """The files in ``directory`` that gen_proto writes, by name."""
    return {
        p.name: p.read_bytes()
        for p in directory.iterdir()
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(gen_proto.GENERATED_SUFFIXES))
    }


def _run_python(code: str, cwd: Path, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter and return the JSON it prints."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stderr}"
    return json.loads(result.stdout)


def _generate(out: Path) -> list[Path]:
    """Run scripts/gen_proto.py in its own interpreter (protoc's C++ runtime does not belong in a
    test process that has loaded other frameworks' native code) and return what it wrote."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen_proto.py"), str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [Path(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------
# Freshness
# --------------------------------------------------------------------------


def test_generated_modules_match_proto_sources(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    written = _generate(out)
    assert written == sorted(written)

    fresh = _owned_files(out)
    committed = _owned_files(GENERATED_DIR)
    assert sorted(committed) == sorted(fresh), "generated file set differs; run scripts/gen_proto.py"
    stale = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert not stale, f"stale generated modules {stale}; run scripts/gen_proto.py"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    _generate(tmp_path / "a")
    _generate(tmp_path / "b")
    assert _owned_files(tmp_path / "a") == _owned_files(tmp_path / "b")


def test_imports_between_generated_modules_are_relative() -> None:
    for name, data in _owned_files(GENERATED_DIR).items():
        text = data.decode("utf-8")
        assert "\nimport model_config_pb2" not in text, name
        assert "\nimport grpc_service_pb2" not in text, name
    service = (GENERATED_DIR / "grpc_service_pb2.py").read_text(encoding="utf-8")
    assert "from . import model_config_pb2 as " in service


# --------------------------------------------------------------------------
# Field numbers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ModelInferRequest", "raw_input_contents", 7),
        ("ModelInferResponse", "raw_output_contents", 6),
        ("InferParameter", "double_param", 4),
        ("InferParameter", "uint64_param", 5),
        ("InferTensorContents", "bytes_contents", 8),
        ("ModelStreamInferResponse", "infer_response", 2),
        ("RepositoryModelLoadRequest", "model_name", 2),
        ("ModelStatistics", "response_stats", 9),
        ("SystemSharedMemoryRegisterRequest", "byte_size", 4),
        ("SystemSharedMemoryStatusResponse", "regions", 1),
        ("CudaSharedMemoryRegisterRequest", "device_id", 3),
    ],
)
def test_service_field_numbers(message: str, field: str, number: int) -> None:
    from gateway.grpc.generated import grpc_service_pb2

    descriptor = grpc_service_pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ModelConfig", "max_batch_size", 4),
        ("ModelConfig", "input", 5),
        ("ModelConfig", "backend", 17),
        ("ModelConfig", "dynamic_batching", 11),
        ("ModelConfig", "parameters", 14),
        ("ModelInput", "dims", 4),
        ("ModelInput", "optional", 8),
        ("ModelOutput", "dims", 3),
        ("ModelInstanceGroup", "kind", 4),
    ],
)
def test_model_config_field_numbers(message: str, field: str, number: int) -> None:
    from gateway.grpc.generated import model_config_pb2

    descriptor = model_config_pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number


def test_model_metadata_response_leaves_field_6_unused() -> None:
    from gateway.grpc.generated import grpc_service_pb2

    descriptor = grpc_service_pb2.ModelMetadataResponse.DESCRIPTOR
    assert 6 not in descriptor.fields_by_number


def test_service_methods() -> None:
    from gateway.grpc.generated import grpc_service_pb2

    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.input_type.full_name == "inference.ModelInferRequest"
    assert stream.output_type.full_name == "inference.ModelStreamInferResponse"
    assert len(service.methods) == 18


# --------------------------------------------------------------------------
# Wire compatibility with tritonclient (subprocess only)
# --------------------------------------------------------------------------

_DUMP_DESCRIPTORS = """
import json
import sys

if sys.argv[1] == "triton":
    from tritonclient.grpc import model_config_pb2, service_pb2 as grpc_service_pb2
else:
    from gateway.grpc.generated import grpc_service_pb2, model_config_pb2

messages, enums = {}, {}

def add_enum(desc):
    enums[desc.full_name] = {v.name: v.number for v in desc.values}

def add_message(desc):
    messages[desc.full_name] = {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            (f.message_type or f.enum_type).full_name if (f.message_type or f.enum_type) else None,
        ]
        for f in desc.fields
    }
    for nested in desc.nested_types:
        add_message(nested)
    for nested in desc.enum_types:
        add_enum(nested)

for fd in (model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR):
    for desc in fd.message_types_by_name.values():
        add_message(desc)
    for desc in fd.enum_types_by_name.values():
        add_enum(desc)

svc = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
methods = {
    m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming]
    for m in svc.methods
}
print(json.dumps({"messages": messages, "enums": enums, "methods": methods}))
"""


def test_descriptors_agree_with_tritonclient(tmp_path: Path) -> None:
    """Every field, enum value and RPC we define exists in Triton's protos, identically."""
    # Both dumps run in subprocesses so this test does not depend on what else
    # the test process has imported.
    ours = _run_python(_DUMP_DESCRIPTORS, REPO_ROOT, "ours")
    theirs = _run_python(_DUMP_DESCRIPTORS, tmp_path, "triton")

    assert ours["messages"], "no messages dumped"
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], f"{message} is not a Triton message"
        for field, spec in fields.items():
            assert theirs["messages"][message].get(field) == spec, f"{message}.{field}"
    for enum, values in ours["enums"].items():
        for value, number in values.items():
            assert theirs["enums"][enum].get(value) == number, f"{enum}.{value}"
    for method, spec in ours["methods"].items():
        assert theirs["methods"].get(method) == spec, method


_PARSE_WITH_TRITONCLIENT = """
import json
import pathlib

from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
from tritonclient.grpc import model_config_pb2, service_pb2

tmp = pathlib.Path.cwd()

def parse(cls, name):
    msg = cls()
    data = (tmp / name).read_bytes()
    msg.ParseFromString(data)
    assert len(UnknownFieldSet(msg)) == 0, f"{name}: unknown fields"
    return msg, msg.SerializeToString(deterministic=True) == data

config, config_same_bytes = parse(model_config_pb2.ModelConfig, "config.bin")
response, response_same_bytes = parse(service_pb2.ModelInferResponse, "response.bin")

request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="req-1")
request.parameters["priority"].uint64_param = 1
request.parameters["timeout"].int64_param = 5000
tensor = request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 4])
tensor.parameters["binary_data_size"].int64_param = 8
request.outputs.add(name="OUTPUT0").parameters["binary_data"].bool_param = True
request.raw_input_contents.append(bytes(range(8)))
(tmp / "request.bin").write_bytes(request.SerializeToString(deterministic=True))

print(json.dumps({
    "config": json_format.MessageToDict(config, preserving_proto_field_name=True),
    "config_same_bytes": config_same_bytes,
    "max_batch_size": config.max_batch_size,
    "first_input_dims": list(config.input[0].dims),
    "response": json_format.MessageToDict(response, preserving_proto_field_name=True),
    "response_same_bytes": response_same_bytes,
    "raw_output_hex": [b.hex() for b in response.raw_output_contents],
    "request": json_format.MessageToDict(request, preserving_proto_field_name=True),
}))
"""


def _sample_model_config() -> Any:
    from gateway.grpc.generated import model_config_pb2 as mc

    config = mc.ModelConfig(
        name="resnet",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=8,
        default_model_filename="model.onnx",
    )
    config.version_policy.specific.versions.extend([1, 3])
    config.input.add(name="INPUT0", data_type=mc.TYPE_FP32, dims=[3, -1, 224], optional=True)
    config.input.add(name="INPUT1", data_type=mc.TYPE_BF16, dims=[1])
    config.output.add(name="OUTPUT0", data_type=mc.TYPE_STRING, dims=[1000], label_filename="labels.txt")
    config.instance_group.add(name="gpu", kind=mc.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    config.instance_group.add(name="cpu", kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend([4, 8])
    batching.max_queue_delay_microseconds = 100
    batching.preserve_ordering = True
    batching.priority_levels = 2
    batching.default_priority_level = 2
    batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.DELAY
    batching.default_queue_policy.default_timeout_microseconds = 1_000_000
    batching.default_queue_policy.allow_timeout_override = True
    batching.default_queue_policy.max_queue_size = 64
    batching.priority_queue_policy[1].max_queue_size = 16
    config.parameters["intra_op_threads"].string_value = "4"
    return config


def _sample_infer_response() -> Any:
    from gateway.grpc.generated import grpc_service_pb2 as gs

    response = gs.ModelInferResponse(model_name="resnet", model_version="3", id="req-42")
    response.parameters["triton_final_response"].bool_param = True
    response.parameters["sequence_id"].uint64_param = 2**64 - 1
    response.parameters["score"].double_param = 0.25
    response.parameters["label"].string_param = "cat"
    response.parameters["count"].int64_param = -7
    raw = response.outputs.add(name="PROB", datatype="FP16", shape=[2, 2])
    raw.parameters["binary_data_size"].int64_param = 8
    typed = response.outputs.add(name="LABELS", datatype="BYTES", shape=[2])
    typed.contents.bytes_contents.extend([b"cat", b"\x00dog"])
    everything = response.outputs.add(name="ALL", datatype="INT32", shape=[1])
    contents = everything.contents
    contents.bool_contents.append(True)
    contents.int_contents.append(-3)
    contents.int64_contents.append(-(2**40))
    contents.uint_contents.append(2**32 - 1)
    contents.uint64_contents.append(2**64 - 1)
    contents.fp32_contents.append(1.5)
    contents.fp64_contents.append(-2.25)
    response.raw_output_contents.extend([bytes(range(8)), b""])
    return response


def test_tritonclient_reads_our_bytes_and_we_read_theirs(tmp_path: Path) -> None:
    from google.protobuf import json_format

    from gateway.grpc.generated import grpc_service_pb2

    config = _sample_model_config()
    response = _sample_infer_response()
    (tmp_path / "config.bin").write_bytes(config.SerializeToString(deterministic=True))
    (tmp_path / "response.bin").write_bytes(response.SerializeToString(deterministic=True))

    seen = _run_python(_PARSE_WITH_TRITONCLIENT, tmp_path)

    # Triton's classes decode every field we set into the field of the same name.
    assert seen["config"] == json_format.MessageToDict(config, preserving_proto_field_name=True)
    assert seen["response"] == json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert seen["config_same_bytes"] and seen["response_same_bytes"]
    assert seen["max_batch_size"] == 8
    assert seen["first_input_dims"] == [3, -1, 224]
    assert seen["raw_output_hex"] == [bytes(range(8)).hex(), ""]
    assert seen["config"]["instance_group"][0]["kind"] == "KIND_GPU"
    assert seen["config"]["dynamic_batching"]["default_queue_policy"]["timeout_action"] == "DELAY"

    # And the other way: a request built with tritonclient's classes parses here.
    request = grpc_service_pb2.ModelInferRequest()
    request.ParseFromString((tmp_path / "request.bin").read_bytes())
    assert json_format.MessageToDict(request, preserving_proto_field_name=True) == seen["request"]
    assert request.parameters["priority"].uint64_param == 1
    assert request.inputs[0].shape == [1, 4]
    assert request.raw_input_contents[0] == bytes(range(8))
