"""Reading the repository folder: which models exist, their configs and version folders.

Scanning never raises for one bad model: a model whose config is unusable comes back
with the error, so the others are served and the broken one is reported as not ready.
"""

from dataclasses import dataclass
from pathlib import Path

from gateway.repository.config import ConfigError, ModelConfig, load_config

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder: its config (or why there is none) and the versions to serve."""

    name: str
    path: Path
    config: ModelConfig | None
    versions: tuple[int, ...]
    error: str | None = None


def scan_repository(root: Path) -> list[ModelEntry]:
    """Every model folder under ``root`` (those holding a config.yaml), sorted by name."""
    if not root.is_dir():
        raise ConfigError(f"{root}: the model repository is not a directory")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            continue
        entries.append(_read_model(folder, config_path))
    return entries


def _read_model(folder: Path, config_path: Path) -> ModelEntry:
    try:
        config = load_config(config_path, folder.name)
    except ConfigError as exc:
        return ModelEntry(folder.name, folder, None, (), str(exc))
    available = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    versions = tuple(config.version_policy.select(available))
    if not versions:
        return ModelEntry(folder.name, folder, config, (),
                          f"{folder}: no version folder matches the version policy "
                          f"(found {sorted(available) or 'none'})")
    return ModelEntry(folder.name, folder, config, versions)
