"""What KServe's storage initializer puts in ``/mnt/models``, served as the InferenceService's one model.

KServe copies (or symlinks) a storageUri's contents into ``/mnt/models``: the files of a folder, or
one file, or (for Triton-style runtimes) a whole model repository. TensorGate's repository wants
``<model>/<version>/model.*``, so ``stage`` lays a single model out that way in a private folder
of symlinks named after the InferenceService (nothing is copied; the mount stays read-only):

- a model file (``model.onnx``, ``resnet.onnx``, ``model.pt``, ``model.pt2``, ``model.jax`` with
  ``params.npz``, a ``*.savedmodel/`` folder) or a SavedModel's own files (``saved_model.pb``,
  ``variables/``): version 1;
- numeric version folders (Triton's ``1/model.onnx``, TF Serving's ``0001/saved_model.pb``): those versions;
- a ``config.yaml`` or ``config.pbtxt`` beside them is the model's config; without one the platform
  comes from the model file (TorchScript, which carries no signature, needs one);
- model folders and nothing else: a Triton repository, served as it is (its folder names are the models).

Anything else stops the server before it starts, with what was mounted and what was expected.
"""

import logging
import os
from pathlib import Path

from gateway.contract import model_name_problem
from gateway.logs import log_event
from gateway.repository.config import Platform
from gateway.repository.layout import CONFIG_FILE
from gateway.repository.pbtxt import CONFIG_FILE as PBTXT_FILE
from gateway.repository.pt2 import is_aoti_package

#: A model file's suffix (a SavedModel: its folder's) -> the platform that serves it. New runtimes add theirs here.
PLATFORM_OF_SUFFIX: dict[str, Platform] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pt2": "torch_export",
    ".savedmodel": "savedmodel",
    ".jax": "jax",
}
#: The name each platform's adapter loads from a version folder.
DEFAULT_NAME: dict[Platform, str] = {
    "onnx": "model.onnx",
    "torchscript": "model.pt",
    "torch_export": "model.pt2",
    "torch_aoti": "model.pt2",
    "savedmodel": "model.savedmodel",
    "jax": "model.jax",
}
#: The file that makes a folder a SavedModel (TF Serving's version folders hold it directly).
SAVED_MODEL_PB = "saved_model.pb"
_CONFIGS = (CONFIG_FILE, PBTXT_FILE)
_EXPECTED = (f"one model file ({', '.join('*' + s for s in PLATFORM_OF_SUFFIX)}), a SavedModel ({SAVED_MODEL_PB}), "
             f"numeric version folders holding one, optionally with {CONFIG_FILE} or {PBTXT_FILE}; "
             f"or a Triton repository of model folders")


log = logging.getLogger("tensorgate.repository")


class MountError(ValueError):
    """The mounted folder is not one model TensorGate can serve; the message says what was found and expected."""


def stage(mount: Path, name: str, staging: Path) -> Path:
    """The repository root to serve for ``mount``: ``mount`` itself if it is a repository, else ``staging``,
    filled with ``name/<version>/`` links to the model in ``mount``."""
    problem = model_name_problem(name)
    if problem is not None:
        raise MountError(f"--model-name: {problem}")
    entries = _entries(mount)
    configs = [e for e in entries if e.name in _CONFIGS and e.is_file()]
    versions = [e for e in entries if e.is_dir() and e.name.isdigit()]
    artefacts = [e for e in entries if e not in configs and e not in versions
                 and (_platform(e) is not None or e.name == SAVED_MODEL_PB)]
    if not configs and not versions and not artefacts and any(e.is_dir() for e in entries):
        log_event(log, "mounted_repository", mount=mount, models=",".join(e.name for e in entries if e.is_dir()))
        return mount
    if len(configs) > 1:
        raise MountError(f"{mount}: both {CONFIG_FILE} and {PBTXT_FILE} were mounted; keep one")
    if versions and artefacts:
        raise MountError(f"{mount}: mounted both version folders ({_names(versions)}) and model files "
                         f"({_names(artefacts)}); TensorGate expected one or the other")
    model = staging / name
    model.mkdir(parents=True)
    for config in configs:
        (model / config.name).symlink_to(config)
    found: set[Platform] = set()
    for version in versions or [mount]:
        found.add(_stage_version(version, model / (str(int(version.name)) if versions else "1"), bool(configs)))
    if len(found) > 1:
        raise MountError(f"{mount}: the version folders hold different formats ({', '.join(sorted(found))})")
    platform = found.pop()
    if not configs:
        if platform == "torchscript":
            raise MountError(f"{mount}: a TorchScript model carries no input or output names; put a {CONFIG_FILE} "
                             f"(or {PBTXT_FILE}) with platform, max_batch_size, inputs and outputs beside it")
        (model / CONFIG_FILE).write_text(f"# {mount}, as KServe mounted it\nplatform: {platform}\n")
    log_event(log, "mounted_model", mount=mount, model=name, platform=platform,
              versions=",".join(sorted((p.name for p in model.iterdir() if p.is_dir()), key=int)),
              config=configs[0].name if configs else "none")
    return staging


def _stage_version(folder: Path, target: Path, configured: bool) -> Platform:
    """Link ``folder``'s model into ``target`` under its adapter's name; return its platform."""
    entries = _entries(folder)
    if any(e.name == SAVED_MODEL_PB and e.is_file() for e in entries):
        target.mkdir()
        (target / DEFAULT_NAME["savedmodel"]).symlink_to(folder)
        return "savedmodel"
    artefacts = [e for e in entries if e.name not in _CONFIGS and _platform(e) is not None]
    if not artefacts:
        unknown = [e for e in entries if e.name not in _CONFIGS]
        found = f"found {_names(unknown)}, of no type TensorGate serves" if unknown else "found nothing"
        raise MountError(f"{folder}: KServe mounted no model TensorGate can serve ({found}); expected {_EXPECTED}")
    if len(artefacts) > 1:
        raise MountError(f"{folder}: KServe mounted {len(artefacts)} model files ({_names(artefacts)}); "
                         f"TensorGate serves one model per InferenceService: keep one")
    artefact = artefacts[0]
    platform = _platform(artefact)
    assert platform is not None
    target.mkdir()
    for entry in entries:
        if entry.name not in _CONFIGS:
            (target / entry.name).symlink_to(entry)
    default = DEFAULT_NAME[platform]
    if artefact.name != default and not configured:
        (target / default).symlink_to(artefact)
    return platform


def _platform(entry: Path) -> Platform | None:
    platform = PLATFORM_OF_SUFFIX.get(entry.suffix)
    if platform is None or (platform == "savedmodel") != entry.is_dir():
        return None
    return "torch_aoti" if platform == "torch_export" and is_aoti_package(entry) else platform


def _entries(folder: Path) -> list[Path]:
    """What is in ``folder``, without hidden names (KServe's ``..data`` links of a Secret, editors' files)."""
    try:
        return sorted(folder / n for n in os.listdir(folder) if not n.startswith(".") and n != "lost+found")
    except OSError as exc:
        raise MountError(f"{folder}: cannot read the mounted model folder: {exc.strerror}") from None


def _names(entries: list[Path]) -> str:
    return ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries)
