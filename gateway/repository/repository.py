"""The repository's models, their versions and states: what is configured, what serves, and why not.

Plain records, no processes: ``gateway.lifecycle`` drives loads and unloads through the worker
pool and writes the outcome here; the supervisor publishes it to the frontends as a ModelTable.

A ``ModelVersion`` lives as long as its version is in the repository, across reloads, so its
counters (loads, unloads, their durations) are the version's whole history. The instance that
serves it is named ``key`` in its worker: ``name:version:generation``, a new generation for
every load, so a new instance can load and warm up beside the one still serving.
"""

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path

from gateway.contract import Signature
from gateway.histogram import Histogram
from gateway.repository.config import ModelConfig
from gateway.repository.layout import ModelEntry, version_folder


class State(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    """One version of one model. ``version`` is None for a model whose config is unusable."""

    name: str
    version: int | None
    #: The config (and folder) the serving instance was loaded with, or the one being tried first.
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
    #: The load of this version's serving instance (part of ``key``).
    generation: int = 0
    #: True while a worker holds the instance ``key`` and the table routes requests to it.
    serving: bool = False
    #: What the serving instance was loaded from (``layout.fingerprint``); poll mode reloads on a change.
    fingerprint: str = ""

    @property
    def key(self) -> str:
        """The serving instance's name in its worker."""
        return f"{self.name}:{self.version}:{self.generation}"

    @property
    def config(self) -> ModelConfig:
        assert self.entry.config is not None, "only loadable versions have a config"
        return self.entry.config

    @property
    def label(self) -> str:
        return f"'{self.name}'" + (f" version {self.version}" if self.version is not None else "")

    @property
    def path(self) -> Path:
        assert self.version is not None, "only loadable versions have a folder"
        return version_folder(self.entry.path, self.version)


@dataclass(slots=True)
class Model:
    """One model folder: its versions, and whether anyone asked for it to be served."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    #: The version-less record of a model that cannot be loaded at all (its config, its folder).
    problem: ModelVersion | None = None
    #: Served on purpose: always in none and poll mode; loaded and not unloaded in explicit mode.
    wanted: bool = False
    #: poll mode: the folder's fingerprint when it was last looked at (unchanged: nothing to do).
    scanned: str = ""
    #: One change at a time per model (a load, an unload, a poll, a worker restart's reload).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def records(self) -> list[ModelVersion]:
        """What the model shows: its versions in order, or its problem."""
        if self.versions:
            return [self.versions[v] for v in sorted(self.versions)]
        return [self.problem] if self.problem is not None else []

    def serving(self) -> list[ModelVersion]:
        return [mv for mv in self.records() if mv.serving]


class Repository:
    """Every model of one repository root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Model] = {}

    def model(self, name: str) -> Model:
        """The record of model ``name``, created (not wanted, nothing loaded) on first use."""
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = Model(name)
        return model

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in sorted(self.models) for mv in self.models[name].records()]
