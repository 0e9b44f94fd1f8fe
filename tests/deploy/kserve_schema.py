"""JSON schemas of KServe's ClusterServingRuntime and InferenceService, from KServe's own SDK types.

Run in the KServe SDK's venv (.venv-kserve): ``kserve_schema.py OUT_DIR``. The `kserve` package's
models (``kserve.models``, generated from KServe's OpenAPI spec, itself generated from the Go types
the CRDs come from) and the `kubernetes` client's models (the Pod, Container, ... types the CRDs
embed) name every field, its type, and which fields are required; each becomes one ``$defs`` entry
with ``additionalProperties: false``. The full CRDs are a 1 MB and a 170 KB YAML file that could not
be brought in here (third_party/kserve/README.md).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client.models

ROOTS = {
    "clusterservingruntime": ("V1alpha1ClusterServingRuntime", "serving.kserve.io/v1alpha1", "ClusterServingRuntime"),
    "servingruntime": ("V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1", "ServingRuntime"),
    "inferenceservice": ("V1beta1InferenceService", "serving.kserve.io/v1beta1", "InferenceService"),
}
_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"}, "datetime": {"type": "string"}, "date": {"type": "string"},
    "object": {},  # IntOrString, free-form RawExtension
    "ResourceQuantity": {"type": ["string", "number"]},  # 500m, 2Gi, 1
}
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def _model(name: str) -> Any:
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _type(spec: str, defs: dict[str, Any]) -> dict[str, Any]:
    if spec in _PRIMITIVES:
        return dict(_PRIMITIVES[spec])
    for opening, closing in (("list[", "]"), ("List[", "]")):
        if spec.startswith(opening) and spec.endswith(closing):
            return {"type": "array", "items": _type(spec[len(opening):-1], defs)}
    for opening, closing in (("dict(", ")"), ("Dict[", "]")):
        if spec.startswith(opening) and spec.endswith(closing):
            return {"type": "object", "additionalProperties": _type(spec[5:-1].split(", ", 1)[1], defs)}
    if spec not in defs:
        defs[spec] = {}
        cls = _model(spec)
        if cls is None:  # a type the SDK names but does not ship: left open, and listed in $comment
            defs[spec] = {"$comment": "not in the SDK's models: not checked"}
            return {"$ref": f"#/$defs/{spec}"}
        required = _required(cls)
        defs[spec] = {
            "type": "object", "additionalProperties": False,
            "properties": {cls.attribute_map[a]: _type(t, defs) for a, t in sorted(cls.openapi_types.items())},
            "required": sorted(cls.attribute_map[a] for a in required),
        }
    return {"$ref": f"#/$defs/{spec}"}


def _required(cls: Any) -> set[str]:
    """The fields a model refuses to be without: pydantic's required fields (kubernetes' models), or the
    generated constructor's None checks (kserve's)."""
    fields = getattr(cls, "model_fields", None)
    if fields is not None:
        return {name for name, field in fields.items() if field.is_required()}
    return set(_REQUIRED.findall(inspect.getsource(cls)))


def schema(root: str, api_version: str, kind: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    _type(root, defs)
    top = defs[root]
    top["properties"]["apiVersion"] = {"const": api_version}
    top["properties"]["kind"] = {"const": kind}
    top["required"] = sorted({*top["required"], "apiVersion", "kind", "metadata", "spec"})
    unchecked = sorted(name for name, definition in defs.items() if "type" not in definition)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"{kind} from kserve=={version('kserve')} and kubernetes=={version('kubernetes')} "
                        f"SDK models, by tests/deploy/kserve_schema.py; not checked (not in the SDK): "
                        f"{', '.join(unchecked) or 'none'}",
            "$ref": f"#/$defs/{root}", "$defs": dict(sorted(defs.items()))}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (root, api_version, kind) in ROOTS.items():
        (out / f"{name}.json").write_text(json.dumps(schema(root, api_version, kind), indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
