"""deploy/kserve's manifests, and the container command KServe makes of them, for the tests.

KServe renders a ServingRuntime's container fields as Go templates over the InferenceService's
metadata (``{{.Name}}``, ``{{.Namespace}}``, ``{{.Labels.KEY}}``, ``{{.Annotations.KEY}}``): the same
substitution is done here, and any other template text fails, so a test never runs arguments
that KServe would render differently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KSERVE_DIR = ROOT / "deploy" / "kserve"
RUNTIME = KSERVE_DIR / "clusterservingruntime.yaml"
#: The InferenceService example of each KServe model format.
INFERENCE_SERVICES = {
    "onnx": KSERVE_DIR / "inferenceservice-onnx.yaml",
    "pytorch": KSERVE_DIR / "inferenceservice-pytorch.yaml",
    "tensorflow": KSERVE_DIR / "inferenceservice-tensorflow.yaml",
    "jax": KSERVE_DIR / "inferenceservice-jax.yaml",
    "onnx-grpc": KSERVE_DIR / "inferenceservice-onnx-grpc.yaml",
}
#: Where KServe's storage initializer puts the model, and the ports KServe routes to.
MOUNT = "/mnt/models"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 8081, 8082

_PLACEHOLDER = re.compile(r"\{\{\s*\.(Name|Namespace|Labels\.[\w.-]+|Annotations\.[\w./-]+)\s*\}\}")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def runtime_container(runtime: dict[str, Any]) -> dict[str, Any]:
    """The container KServe runs the model in (it must be named kserve-container)."""
    containers: list[dict[str, Any]] = runtime["spec"]["containers"]
    return next(c for c in containers if c["name"] == "kserve-container")


def render(text: str, metadata: dict[str, Any]) -> str:
    """``text`` with KServe's placeholders filled from an InferenceService's metadata."""
    def value(match: re.Match[str]) -> str:
        field, _, key = match.group(1).partition(".")
        if not key:
            return str(metadata.get(field.lower(), "default" if field == "Namespace" else ""))
        return str((metadata.get(field.lower()) or {}).get(key, "<no value>"))

    rendered = _PLACEHOLDER.sub(value, text)
    assert "{{" not in rendered, f"template text KServe would render otherwise: {text!r}"
    return rendered


def container_args(isvc: dict[str, Any], mount: Path, ports: dict[int, int]) -> list[str]:
    """The runtime container's args as KServe renders them for ``isvc``, with ``/mnt/models`` at ``mount``
    and each KServe port replaced by the free loopback port ``ports`` maps it to."""
    args = []
    for arg in runtime_container(load(RUNTIME))["args"]:
        arg = render(arg, isvc["metadata"]).replace(MOUNT, str(mount))
        flag, _, value = arg.partition("=")
        if flag.endswith("-port"):
            arg = f"{flag}={ports[int(value)]}"
        args.append(arg)
    return args
