"""Helpers shared by the test suites."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "scripts"

#: The one skip reason a complete test machine may give (tests/conftest.py fails every other skip under
#: make test): a GPU there turns the checks of the no-GPU error off.
MACHINE_SKIP = "this machine has a GPU"


def load_script(name: str) -> types.ModuleType:
    """Import ``scripts/<name>.py`` by path, since ``scripts`` is a folder of tools, not a package.

    The module is registered in ``sys.modules`` before it runs (dataclasses need that) and
    reused afterwards, so every test sees the same classes.
    """
    module_name = f"_tensorgate_script_{name}"
    cached = sys.modules.get(module_name)
    if cached is not None:
        return cached
    path = SCRIPTS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def run_client_script(script: Path, *args: str, timeout: float = 180, python: str = sys.executable) -> Any:
    """Run a client check script in a process of its own (with ``python``: another venv's, for a client
    whose pins clash with ours) and return the JSON of its last line.

    ``tritonclient.grpc`` registers ``inference.*`` in protobuf's default pool, as our generated
    modules do, so a test that uses it must not import it into the test process.
    """
    run = subprocess.run([python, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def assert_broken_models_reported(url: str, broken: dict[str, list[str]]) -> dict[str, Any]:
    """Each of ``broken`` (model -> fragments its reason must hold, the first naming the file) is
    UNAVAILABLE in the index and not ready, with the fragments in both answers; returns the index by name."""
    import httpx

    index = {m["name"]: m for m in httpx.get(f"{url}/v2/models").json()["models"]}
    for name, fragments in broken.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        for fragment in fragments:
            assert fragment in index[name]["reason"], (name, index[name]["reason"])
        ready = httpx.get(f"{url}/v2/models/{name}/ready")
        assert ready.status_code == 503 and fragments[0] in ready.json()["reason"]
    return index
