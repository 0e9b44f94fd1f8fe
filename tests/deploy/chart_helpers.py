"""Render and check the Helm chart offline with Helm's own engine (helm-python-sdk, no helm binary)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "helm" / "tensorgate"
EXAMPLES = CHART / "examples"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
RELEASE, NAMESPACE = "tg", "serving"
FULLNAME = f"{RELEASE}-tensorgate"

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas offline.
KUBE_VERSIONS = ("1.29.0", "1.37.0")

#: Value sets rendered by the tests: the defaults and every examples/values-*.yaml.
VALUE_SETS: dict[str, Path | None] = {"defaults": None} | {
    path.stem.removeprefix("values-"): path for path in sorted(EXAMPLES.glob("values-*.yaml"))
}

def load_values(name: str) -> dict[str, Any] | None:
    path = VALUE_SETS[name]
    if path is None:
        return None
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as `helm install` would render them."""
    with helm.Chart.load(chart) as loaded:
        return loaded.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates."""
    objects: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@cache
def render_set(name: str) -> tuple[dict[str, Any], ...]:
    """The manifests of a named value set (cached: rendering is pure)."""
    return tuple(manifests(render(load_values(name))))


def by_kind(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def server_container(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = next(c for c in containers if c["name"] == "tensorgate")
    return container
