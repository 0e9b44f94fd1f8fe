"""Our TF Serving .proto text against TF Serving's own stubs, and who may import what.

TF Serving's stubs (``tensorflow-serving-api``, over tensorflow's own protos) and our generated
modules both register ``tensorflow.*`` in protobuf's default pool, so every dump runs in a
process of its own. Field numbers, types and names are the interface; the text is ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto" / "tfserving"
GENERATED_DIR = REPO_ROOT / "gateway" / "tfserving" / "generated"


def _python(code: str, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter and return the JSON of its last line."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=180, check=False, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin",
                                                                   "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_generated_modules_match_the_proto_text(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen_proto.py"), str(tmp_path),
                          "--proto-dir", str(PROTO_DIR)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED_DIR.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), "run scripts/gen_proto.py"
    assert [n for n in fresh if fresh[n] != committed[n]] == [], "stale generated modules; run scripts/gen_proto.py"


_DUMP = """
import json
import sys

if sys.argv[1] == "tfserving":
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2,
                                         prediction_service_pb2)
    files = [get_model_metadata_pb2.DESCRIPTOR, get_model_status_pb2.DESCRIPTOR,
             prediction_service_pb2.DESCRIPTOR, model_service_pb2.DESCRIPTOR]
    seen = set()
    def walk(fd):
        if fd.name in seen:
            return
        seen.add(fd.name)
        files.append(fd)
        for dependency in fd.dependencies:
            walk(dependency)
    for fd in list(files):
        walk(fd)
else:
    from gateway.tfserving.generated import tf_error_codes_pb2, tf_framework_pb2, tf_serving_apis_pb2
    files = [tf_error_codes_pb2.DESCRIPTOR, tf_framework_pb2.DESCRIPTOR, tf_serving_apis_pb2.DESCRIPTOR]

messages, enums, methods = {}, {}, {}

def add_enum(desc):
    enums[desc.full_name] = {v.name: v.number for v in desc.values}

def add_message(desc):
    messages[desc.full_name] = {
        f.name: [f.number, f.type, f.is_repeated, (f.message_type or f.enum_type).full_name
                 if (f.message_type or f.enum_type) else None, f.containing_oneof.name if f.containing_oneof else None]
        for f in desc.fields}
    for nested in desc.nested_types:
        add_message(nested)
    for nested in desc.enum_types:
        add_enum(nested)

for fd in files:
    for desc in fd.message_types_by_name.values():
        add_message(desc)
    for desc in fd.enum_types_by_name.values():
        add_enum(desc)
    for service in fd.services_by_name.values():
        for m in service.methods:
            methods[m.full_name] = [m.input_type.full_name, m.output_type.full_name]
print(json.dumps({"messages": messages, "enums": enums, "methods": methods}))
"""


def test_messages_agree_with_tf_serving_stubs() -> None:
    """Every message, field, enum value and method we declare is TF Serving's, identically."""
    ours, theirs = _python(_DUMP, "ours"), _python(_DUMP, "tfserving")
    assert {"tensorflow.serving.PredictRequest", "tensorflow.TensorProto"} <= set(ours["messages"])
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], f"{message} is not one of TF Serving's messages"
        for field, spec in fields.items():
            assert theirs["messages"][message].get(field) == spec, f"{message}.{field}"
    for enum, values in ours["enums"].items():
        for value, number in values.items():
            assert theirs["enums"][enum].get(value) == number, f"{enum}.{value}"
    assert sorted(ours["methods"]) == ["tensorflow.serving.ModelService.GetModelStatus",
                                       "tensorflow.serving.PredictionService.GetModelMetadata",
                                       "tensorflow.serving.PredictionService.Predict"]
    for method, spec in ours["methods"].items():
        assert theirs["methods"][method] == spec, method


def test_tensorflow_and_our_tensorflow_messages_never_share_a_process() -> None:
    """A frontend (our generated tensorflow.* modules) never imports tensorflow; the SavedModel
    worker (tensorflow) never imports our generated modules. Both in one process would fail to
    start: the two define the same messages in protobuf's default pool."""
    frontend = _python("""
        import json, sys
        import gateway.frontend
        assert "gateway.tfserving.generated.tf_serving_apis_pb2" in sys.modules
        print(json.dumps(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))))
    """)
    worker = _python("""
        import json, sys
        import runtimes.savedmodel, runtimes.worker
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("gateway.tfserving"))))
    """)
    assert (frontend, worker) == ([], [])
