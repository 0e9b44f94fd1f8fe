"""Reading the repository folder: which models exist, their configs and version folders.

Scanning never raises for one bad model: a model whose config is unusable comes back
with the error, so the others are served and the broken one is reported as not ready.
Every folder under the root is a model, with a config.yaml or a Triton config.pbtxt, or laid
out as TF Serving's model base path (``<version>/saved_model.pb`` and ``variables/``, no config
file: a SavedModel served unbatched, as TF Serving serves it by default); a folder that is none
of these is reported the same way, never skipped. Version folders may be zero-padded
(TF Serving's ``00000123`` is version 123). Hidden folders and the
file system's ``lost+found`` are not models (the latter is logged).
"""

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.contract import model_name_problem
from gateway.logs import log_event
from gateway.repository.config import ConfigError, ModelConfig, load_config
from gateway.repository.pbtxt import CONFIG_FILE as PBTXT_FILE
from gateway.repository.pbtxt import load_pbtxt

CONFIG_FILE = "config.yaml"
#: What a version folder of TF Serving's layout holds (the SavedModel itself, no model.savedmodel/).
SAVED_MODEL_FILE = "saved_model.pb"

#: What ext4 and friends create at a volume's root (a PVC mounted as the repository has one).
_NOT_MODELS = frozenset({"lost+found"})
#: A model's warm-up files (Triton's place for model_warmup's input_data_file).
WARMUP_FOLDER = "warmup"

log = logging.getLogger("tensorgate.repository")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder: its config (or why there is none) and the versions to serve."""

    name: str
    path: Path
    config: ModelConfig | None
    versions: tuple[int, ...]
    error: str | None = None
    #: The file the config was read from (None when there is none to read).
    config_path: Path | None = None


def scan_repository(root: Path) -> list[ModelEntry]:
    """Every model folder under ``root``, sorted by name; unusable ones carry their error."""
    if not root.is_dir():
        raise ConfigError(f"{root}: the model repository is not a directory")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in _NOT_MODELS:
            log_event(log, "repository_folder_ignored", folder=folder, reason="file system folder, not a model")
            continue
        entries.append(_read_model(folder))
    return entries


def model_folders(root: Path) -> set[str]:
    """The names of the model folders under ``root`` (what ``scan_repository`` reads), without reading them."""
    try:
        return {p.name for p in root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and p.name not in _NOT_MODELS}
    except OSError:
        return set()


def read_model(root: Path, name: str) -> ModelEntry | None:
    """The model folder ``root/name`` read afresh, or None if there is no such folder (``name`` checked first)."""
    problem = model_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    folder = root / name
    if not folder.is_dir():
        return None
    return _read_model(folder)


def fingerprint(folder: Path, version: int | None = None) -> str:
    """What a load of ``folder`` (one version of it, or all) depends on: the config files' bytes, and the
    name, size and modification time of every file in the version folders and ``warmup/``.

    Poll mode compares fingerprints to find models and versions that changed since they were loaded.
    """
    digest = hashlib.sha256()
    for config in (CONFIG_FILE, PBTXT_FILE):
        try:
            digest.update(config.encode() + b"\0" + (folder / config).read_bytes() + b"\0")
        except OSError:
            digest.update(config.encode() + b"\1")
    try:
        children = sorted(p.name for p in folder.iterdir() if p.is_dir())
    except OSError:
        children = []
    for child in children:
        if (child == WARMUP_FOLDER or (child.isdigit() and (version is None or int(child) == version))):
            digest.update(b"D" + child.encode() + b"\0")
            _digest_files(digest.update, folder / child)
    return digest.hexdigest()


def version_prints(folder: Path) -> dict[int, str]:
    """``fingerprint(folder, v)`` for every version folder ``v`` present now."""
    try:
        versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return {}
    return {version: fingerprint(folder, version) for version in versions}


def _digest_files(update: Callable[[bytes], None], top: Path) -> None:
    for directory, folders, files in os.walk(top, followlinks=True):
        folders.sort()
        for name in sorted(files):
            path = Path(directory) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            update(f"{path.relative_to(top)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())


def config_file(folder: Path) -> Path:
    """The one config file of a model folder; ConfigError if there are none or two."""
    yaml_path, pbtxt_path = folder / CONFIG_FILE, folder / PBTXT_FILE
    if yaml_path.is_file() and pbtxt_path.is_file():
        raise ConfigError(f"{folder}: both {CONFIG_FILE} and {PBTXT_FILE} are present; keep one "
                          f"(TensorGate does not choose between them or merge them)")
    if yaml_path.is_file():
        return yaml_path
    if pbtxt_path.is_file():
        return pbtxt_path
    raise ConfigError(f"{folder}: no {CONFIG_FILE} or {PBTXT_FILE} in the model folder, and no version folder "
                      f"holding a {SAVED_MODEL_FILE} (TF Serving's layout): every folder in the repository is a model; "
                      f"Triton's config-less auto-complete is not supported")


def version_folder(folder: Path, version: int) -> Path:
    """The folder of ``version`` in model folder ``folder``: ``<version>``, or a zero-padded name."""
    exact = folder / str(version)
    if exact.is_dir():
        return exact
    with contextlib.suppress(OSError):
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name.isdigit() and int(child.name) == version:
                return child
    return exact


def tf_serving_config(folder: Path) -> ModelConfig | None:
    """The config of a folder in TF Serving's layout (no config file; a version folder holds saved_model.pb):
    the SavedModel's signature, unbatched (max_batch_size 0: TF Serving batches only when told to), so each
    request runs with the batch the client sent, as in TF Serving. None for any other folder."""
    if (folder / CONFIG_FILE).exists() or (folder / PBTXT_FILE).exists():
        return None
    try:
        versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    except OSError:
        return None
    if any((p / SAVED_MODEL_FILE).is_file() for p in versions):
        return ModelConfig(platform="savedmodel")
    return None


def _read_model(folder: Path) -> ModelEntry:
    tf_serving = tf_serving_config(folder)
    if tf_serving is not None:
        return entry_for(folder, tf_serving, None)
    try:
        path = config_file(folder)
        config = load_pbtxt(path, folder.name) if path.name == PBTXT_FILE else load_config(path, folder.name)
    except ConfigError as exc:
        return ModelEntry(folder.name, folder, None, (), str(exc))
    return entry_for(folder, config, path)


def entry_for(folder: Path, config: ModelConfig, path: Path | None) -> ModelEntry:
    """The model folder served with ``config`` (read from ``path``, or None for a load request's override)."""
    available = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    versions = tuple(config.version_policy.select(available))
    if not versions:
        return ModelEntry(folder.name, folder, config, (),
                          f"{folder}: no version folder matches the version policy "
                          f"(found {sorted(available) or 'none'})", path)
    return ModelEntry(folder.name, folder, config, versions, config_path=path)
