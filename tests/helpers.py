"""Helpers shared by the test suites."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


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
