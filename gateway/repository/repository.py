"""The repository's model versions and their states: what is configured, what loaded, and why not.

Plain records, no processes: ``gateway.lifecycle`` drives the loads through the worker pool
and writes the outcome here; the supervisor publishes it to the frontends as a ModelTable.
"""

import enum
from dataclasses import dataclass, field
from pathlib import Path

from gateway.contract import Signature
from gateway.histogram import Histogram
from gateway.repository.config import ModelConfig
from gateway.repository.layout import ModelEntry, scan_repository


class State(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    """One version of one model. ``version`` is None for a model whose config is unusable."""

    name: str
    version: int | None
    entry: ModelEntry
    state: State = State.LOADING
    reason: str = ""
    signature: Signature | None = None
    versions: tuple[str, ...] = field(default=())
    load_seconds: float | None = None
    loads_succeeded: int = 0
    loads_failed: int = 0
    load_time: Histogram = field(default_factory=Histogram)
    unloads: int = 0
    unload_time: Histogram = field(default_factory=Histogram)

    @property
    def key(self) -> str:
        """The version's name in its worker."""
        return f"{self.name}:{self.version}"

    @property
    def config(self) -> ModelConfig:
        assert self.entry.config is not None, "only loadable versions have a config"
        return self.entry.config

    @property
    def label(self) -> str:
        return f"'{self.name}'" + (f" version {self.version}" if self.version is not None else "")

    @property
    def path(self) -> Path:
        return self.entry.path / str(self.version)


class Repository:
    """Every model folder of one repository root and the versions its config selects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, list[ModelVersion]] = {}

    def scan(self) -> list[ModelVersion]:
        """Read the repository; returns the versions to load (the unusable ones are recorded as such)."""
        to_load: list[ModelVersion] = []
        for entry in scan_repository(self.root):
            names = tuple(str(v) for v in entry.versions)
            versions = [ModelVersion(entry.name, v, entry, versions=names) for v in entry.versions] or [
                ModelVersion(entry.name, None, entry, State.UNAVAILABLE, entry.error or "no versions")
            ]
            self._models[entry.name] = versions
            to_load.extend(mv for mv in versions if mv.state is State.LOADING)
        return to_load

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in sorted(self._models) for mv in self._models[name]]
