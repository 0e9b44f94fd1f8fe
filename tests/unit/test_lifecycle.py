"""Model lifecycle (gateway/lifecycle.py): control modes, zero-downtime switches, failed loads that change
nothing, unloads, polling, overrides and warm-up plans, over real repository folders.

The worker pool is an in-process fake (the worker boundary is one small interface): it records
what the lifecycle asks of the workers and fails the loads a test tells it to.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway import lifecycle as lifecycle_module
from gateway.contract import UNLOADED, LoadModel, Signature, TensorSpec, WarmUp
from gateway.lifecycle import NOT_EXPLICIT, ModelLifecycle, WarmupError, warmup_samples
from gateway.protocol.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gateway.repository import layout
from gateway.repository.layout import ModelEntry
from gateway.repository.repository import Model, Repository, State
from gateway.workers.ipc import CallFailed, ConnectionGone, Failure

CONFIG = """platform: onnx
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [4]}]
"""


class FakePool:
    """Records loads, warm-ups and unloads; ``fail`` holds (model, version) pairs whose next loads fail."""

    def __init__(self) -> None:
        self.loaded: dict[str, LoadModel] = {}
        self.loads: list[str] = []
        self.warmups: list[WarmUp] = []
        self.unloads: list[tuple[str, int]] = []
        self.fail: set[tuple[str, str]] = set()
        self.exits: set[tuple[str, str]] = set()
        self.fail_warmup = False
        self.events: list[str] = []

    async def load(self, framework: str, spec: LoadModel) -> Signature | None:
        await asyncio.sleep(0)
        self.loads.append(spec.key)
        if (spec.model_name, spec.version) in self.exits:
            raise ConnectionGone("the connection closed")
        if (spec.model_name, spec.version) in self.fail:
            raise CallFailed(Failure("invalid", f"{spec.path}/model.onnx: cannot load (the test says so)"))
        self.loaded[spec.key] = spec
        return None

    async def warm_up(self, framework: str, body: WarmUp) -> None:
        self.warmups.append(body)
        if self.fail_warmup:
            raise CallFailed(Failure("invalid", f"warm-up sample '{body.samples[0].name}' failed: boom"))

    async def unload(self, framework: str, key: str, after_generation: int = 0) -> None:
        self.events.append(f"unload {key} after {after_generation}")
        self.unloads.append((key, after_generation))
        self.loaded.pop(key, None)


class Harness:
    def __init__(self, root: Path, mode: str) -> None:
        self.pool = FakePool()
        self.repository = Repository(root)
        self.generation = 0
        self.lifecycle = ModelLifecycle(self.repository, self.pool, lambda: None, self.publish, mode)  # type: ignore[arg-type]

    async def publish(self) -> int:
        self.generation += 1
        self.pool.events.append(f"publish {self.generation}")
        return self.generation

    def model(self, name: str) -> Model:
        return self.repository.models[name]

    def states(self, name: str) -> dict[int | None, tuple[str, bool]]:
        return {mv.version: (mv.state.value, mv.serving) for mv in self.model(name).records()}

    def keys(self, name: str) -> dict[int | None, str]:
        return {mv.version: mv.key for mv in self.model(name).serving()}

    async def settle(self) -> None:
        """Let the background unloads run."""
        for _ in range(5):
            await asyncio.sleep(0)


def _model(root: Path, name: str, versions: tuple[int, ...] = (1,), config: str = CONFIG) -> Path:
    folder = root / name
    for version in versions:
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / str(version) / "model.onnx").write_bytes(b"weights %d" % version)
    (folder / "config.yaml").write_text(config)
    return folder


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


# --- start-up in each mode -----------------------------------------------------------------------------------


def test_none_mode_loads_every_model_and_refuses_the_api(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    _model(tmp_path, "b", (1, 2), CONFIG + "version_policy: {all: {}}\n")
    (tmp_path / "broken").mkdir()

    async def scenario() -> None:
        h = Harness(tmp_path, "none")
        await h.lifecycle.start()
        assert h.states("a") == {1: ("READY", True)}
        assert h.states("b") == {1: ("READY", True), 2: ("READY", True)}
        [problem] = h.model("broken").records()
        assert problem.version is None and problem.state is State.UNAVAILABLE and "no config.yaml" in problem.reason
        assert all(m.wanted for m in h.repository.models.values())
        for call in (h.lifecycle.load("a"), h.lifecycle.unload("a")):
            with pytest.raises(Unavailable, match=NOT_EXPLICIT):
                await call
    run(scenario())


def test_explicit_mode_loads_only_the_named_models(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    _model(tmp_path, "b")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a", "missing"))
        assert h.states("a") == {1: ("READY", True)}
        assert h.model("b").records() == [] and not h.model("b").wanted  # known, not loaded
        [problem] = h.model("missing").records()
        assert "--load-model missing: no folder 'missing'" in problem.reason and problem.loads_failed == 1

        everything = Harness(tmp_path, "explicit")
        await everything.lifecycle.start(("*",))
        assert everything.states("a") == everything.states("b") == {1: ("READY", True)}
    run(scenario())


# --- zero-downtime changes -----------------------------------------------------------------------------------


def test_a_reload_switches_to_a_new_instance_then_retires_the_old_one_after_the_fence(tmp_path: Path) -> None:
    _model(tmp_path, "a")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        [old] = h.keys("a").values()
        published = h.generation
        await h.lifecycle.load("a")
        [new] = h.keys("a").values()
        assert new != old and new.startswith("a:1:") and h.states("a") == {1: ("READY", True)}
        await h.settle()
        # The old instance is unloaded after the table without it went out, fenced at that table's generation.
        assert h.pool.unloads == [(old, published + 1)]
        assert h.pool.events.index(f"publish {published + 1}") < h.pool.events.index(f"unload {old} after "
                                                                                    f"{published + 1}")
        mv = h.model("a").versions[1]
        assert (mv.loads_succeeded, mv.loads_failed, mv.unloads) == (2, 0, 1)
        assert sum(mv.unload_time.counts) == 1
        assert set(h.pool.loaded) == {new}
    run(scenario())


def test_a_failed_reload_leaves_the_serving_instance_untouched(tmp_path: Path) -> None:
    _model(tmp_path, "a")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        before = dict(h.keys("a"))
        h.pool.fail.add(("a", "1"))
        with pytest.raises(Conflict, match=r"failed to load 'a': version 1: .*cannot load"):
            await h.lifecycle.load("a")
        await h.settle()
        mv = h.model("a").versions[1]
        assert h.keys("a") == before and mv.state is State.READY and mv.serving
        assert "a reload failed, the previous instance still serves" in mv.reason
        assert (mv.loads_succeeded, mv.loads_failed, mv.unloads) == (1, 1, 0)
        assert h.pool.unloads == []  # what serves is never unloaded for a failed reload
        h.pool.fail.clear()
        await h.lifecycle.load("a")  # the next good load clears the reason
        assert h.model("a").versions[1].reason == ""
    run(scenario())


def test_a_new_version_that_fails_keeps_the_old_one_serving(tmp_path: Path) -> None:
    _model(tmp_path, "a")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        _model(tmp_path, "a", (2,))  # latest: 1 now selects version 2 alone
        h.pool.fail.add(("a", "2"))
        with pytest.raises(Conflict, match="version 2"):
            await h.lifecycle.load("a")
        assert h.states("a") == {1: ("READY", True), 2: ("UNAVAILABLE", False)}
        assert "not replaced: version 2" in h.model("a").versions[1].reason
        h.pool.fail.clear()
        await h.lifecycle.load("a")
        assert h.states("a") == {2: ("READY", True)}
        await h.settle()
        assert [key for key, _ in h.pool.unloads] == ["a:1:1"]
    run(scenario())


def test_one_failing_new_version_frees_the_new_ones_that_loaded(tmp_path: Path) -> None:
    _model(tmp_path, "a", (1,), CONFIG + "version_policy: {all: {}}\n")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        _model(tmp_path, "a", (2, 3), CONFIG + "version_policy: {all: {}}\n")
        h.pool.fail.add(("a", "3"))
        with pytest.raises(Conflict, match="version 3"):
            await h.lifecycle.load("a")
        await h.settle()
        states = h.states("a")
        assert states[1] == ("READY", True) and states[3] == ("UNAVAILABLE", False) and 2 not in states
        assert all(key.startswith(("a:1:", "a:2:")) for key, _ in h.pool.unloads)  # version 2's new + 1's new
        assert set(h.pool.loaded) == {mv.key for mv in h.model("a").serving()}
    run(scenario())


def test_a_broken_config_while_serving_is_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    folder = _model(tmp_path, "a")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        (folder / "config.yaml").write_text("platform: onnx\nmax_batch_size: -1\n")
        with pytest.raises(Conflict, match="max_batch_size"):
            await h.lifecycle.load("a")
        mv = h.model("a").versions[1]
        assert mv.serving and mv.state is State.READY and mv.loads_failed == 1
    run(scenario())


def test_first_load_problems_are_conflicts_naming_the_cause(tmp_path: Path) -> None:
    (tmp_path / "no_versions").mkdir()
    (tmp_path / "no_versions" / "config.yaml").write_text(CONFIG)
    _model(tmp_path, "bad_file")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start()
        with pytest.raises(Conflict, match="no version folder matches"):
            await h.lifecycle.load("no_versions")
        h.pool.fail.add(("bad_file", "1"))
        with pytest.raises(Conflict, match="cannot load"):
            await h.lifecycle.load("bad_file")
        assert h.states("bad_file") == {1: ("UNAVAILABLE", False)}
        with pytest.raises(NotFound, match="no model folder 'nothing'"):
            await h.lifecycle.load("nothing")
        for name in ("../a", "a/b", "..", ".hidden", ""):
            with pytest.raises(InvalidRequest):
                await h.lifecycle.load(name)
    run(scenario())


# --- unload --------------------------------------------------------------------------------------------------


def test_unload_takes_the_model_out_at_once_and_frees_it_after_the_fence(tmp_path: Path) -> None:
    _model(tmp_path, "a", (1, 2), CONFIG + "version_policy: {all: {}}\n")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        keys = set(h.keys("a").values())
        await h.lifecycle.unload("a")
        assert all(mv.state is State.UNAVAILABLE and mv.reason == UNLOADED for mv in h.model("a").records())
        assert not h.model("a").wanted
        await h.settle()
        assert {key for key, _ in h.pool.unloads} == keys
        assert {generation for _, generation in h.pool.unloads} == {h.generation}
        await h.lifecycle.unload("a")  # again: nothing to do
        await h.lifecycle.load("a")
        assert h.states("a") == {1: ("READY", True), 2: ("READY", True)}
        with pytest.raises(NotFound):
            await h.lifecycle.unload("nothing")
    run(scenario())


def test_a_worker_restart_reloads_what_served_and_what_its_exit_cut_short(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    _model(tmp_path, "b")
    _model(tmp_path, "c")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        h.pool.exits.add(("b", "1"))  # the worker dies while b loads
        await h.lifecycle.start(("a", "b"))
        assert h.states("b") == {1: ("UNAVAILABLE", False)}
        assert "worker exited while loading it" in h.model("b").versions[1].reason
        old = h.keys("a")[1]
        h.pool.exits.clear()
        h.pool.loaded.clear()  # the worker and its instances are gone
        await h.lifecycle.reload_framework("onnxruntime")
        assert h.states("a") == h.states("b") == {1: ("READY", True)}
        assert h.keys("a")[1] != old and h.model("c").records() == []  # c was never asked for
        await h.settle()
        assert h.pool.unloads == []  # a dead worker's instances are not unloaded: they are gone
    run(scenario())


def test_the_index_learns_of_folders_added_or_removed(tmp_path: Path) -> None:
    _model(tmp_path, "a")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        assert not await h.lifecycle.refresh_folders()
        _model(tmp_path, "b")
        (tmp_path / ".hidden").mkdir()
        assert await h.lifecycle.refresh_folders()
        assert set(h.repository.models) == {"a", "b"} and h.model("b").records() == []
        shutil.rmtree(tmp_path / "b")
        shutil.rmtree(tmp_path / "a")
        assert await h.lifecycle.refresh_folders()
        assert set(h.repository.models) == {"a"}  # a loaded model stays until it is unloaded
    run(scenario())


# --- poll ----------------------------------------------------------------------------------------------------


def test_poll_loads_new_versions_reloads_changes_and_unloads_removed_models(tmp_path: Path) -> None:
    folder = _model(tmp_path, "a")
    _model(tmp_path, "b")

    async def scenario() -> None:
        h = Harness(tmp_path, "poll")
        await h.lifecycle.start()
        a1, b1 = h.keys("a")[1], h.keys("b")[1]
        await h.lifecycle.poll()
        assert h.keys("a") == {1: a1} and h.keys("b") == {1: b1}  # nothing changed: nothing reloaded

        _model(tmp_path, "a", (2,))
        await h.lifecycle.poll()
        assert h.states("a") == {2: ("READY", True)} and h.keys("b") == {1: b1}
        await h.settle()
        assert (a1, h.generation) in h.pool.unloads

        (folder / "config.yaml").write_text(CONFIG + "instances: {count: 2}\n")
        a2 = h.keys("a")[2]
        await h.lifecycle.poll()
        assert h.keys("a")[2] != a2 and h.pool.loaded[h.keys("a")[2]].instances == 2

        (folder / "config.yaml").write_text("platform: onnx\nbogus: 1\n")
        await h.lifecycle.poll()  # a broken edit: the last good instance keeps serving
        assert h.states("a") == {2: ("READY", True)} and "bogus" in h.model("a").versions[2].reason
        loads = len(h.pool.loads)
        await h.lifecycle.poll()  # unchanged since: not tried again
        assert len(h.pool.loads) == loads

        shutil.rmtree(tmp_path / "b")
        await h.lifecycle.poll()
        assert "b" not in h.repository.models
        await h.settle()
        assert (b1, h.generation) in h.pool.unloads
    run(scenario())


def test_a_config_caught_half_written_by_the_scan_is_served_once_whole(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll that reads a config file while its writer has only truncated it must end up serving the
    whole file: the integration suite's poll test once stayed broken for good (the load recorded the
    fingerprint of the finished file, taken after the scan read the empty one)."""
    folder = _model(tmp_path, "a")
    real_scan = layout.scan_repository

    def scan_while_the_writer_finishes(root: Path) -> list[ModelEntry]:
        entries = real_scan(root)  # reads the truncated file
        (folder / "config.yaml").write_text(CONFIG + "instances: {count: 2}\n")  # the writer is done
        monkeypatch.setattr(lifecycle_module, "scan_repository", real_scan)
        return entries

    async def scenario() -> None:
        h = Harness(tmp_path, "poll")
        await h.lifecycle.start()
        (folder / "config.yaml").write_text("")
        monkeypatch.setattr(lifecycle_module, "scan_repository", scan_while_the_writer_finishes)
        await h.lifecycle.poll()
        await h.lifecycle.poll()
        assert h.pool.loaded[h.keys("a")[1]].instances == 2
    run(scenario())


def test_a_config_written_just_after_the_scan_read_it_is_served(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A config written between the scan's read and the fingerprints of the load that follows: the
    load must serve the file its fingerprints describe, or the next poll sees no change and the
    older config serves for good."""
    folder = _model(tmp_path, "a")
    real_scan = layout.scan_repository

    def scan_then_write(root: Path) -> list[ModelEntry]:
        entries = real_scan(root)  # reads count 2
        (folder / "config.yaml").write_text(CONFIG + "instances: {count: 3}\n")
        monkeypatch.setattr(lifecycle_module, "scan_repository", real_scan)
        return entries

    async def scenario() -> None:
        h = Harness(tmp_path, "poll")
        await h.lifecycle.start()
        (folder / "config.yaml").write_text(CONFIG + "instances: {count: 2}\n")
        monkeypatch.setattr(lifecycle_module, "scan_repository", scan_then_write)
        await h.lifecycle.poll()
        await h.lifecycle.poll()
        assert h.pool.loaded[h.keys("a")[1]].instances == 3
    run(scenario())


# --- overrides -----------------------------------------------------------------------------------------------


def test_a_config_override_replaces_the_file_and_a_bad_one_is_a_400(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    override = {"max_batch_size": 2, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
                "instance_group": [{"count": 3, "kind": "KIND_CPU"}]}

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        await h.lifecycle.load("a", json.dumps(override))
        spec = h.pool.loaded[h.keys("a")[1]]
        assert (spec.max_batch_size, spec.instances, spec.platform) == (2, 3, "onnx")  # platform from the file
        for text, fragment in (("{not json", "not JSON"), ("[1]", "JSON object"),
                               ('{"optimization": {}}', "optimization: optimization settings"),
                               ('{"max_batch_size": "x"}', "max_batch_size"),
                               ('{"name": "other"}', "is not the model's name 'a'")):
            with pytest.raises(InvalidRequest, match="Invalid config override") as info:
                await h.lifecycle.load("a", text)
            assert fragment in str(info.value)
        assert h.pool.loaded[h.keys("a")[1]].max_batch_size == 2  # still the override's instance
    run(scenario())


# --- warm-up -------------------------------------------------------------------------------------------------


def test_warm_up_runs_before_the_switch_and_a_failing_one_fails_the_load(tmp_path: Path) -> None:
    _model(tmp_path, "a", config=CONFIG + "warmup: [{batch_size: 3, count: 2, inputs: {x: {random: true}}}]\n")

    async def scenario() -> None:
        h = Harness(tmp_path, "explicit")
        await h.lifecycle.start(("a",))
        [warmup] = h.pool.warmups
        assert warmup.key == h.keys("a")[1] and warmup.outputs == ("y",)
        [sample] = warmup.samples
        assert (sample.batch_size, sample.count, sample.inputs[0].shape, sample.inputs[0].source) == (3, 2, (4,),
                                                                                                     "random")
        h.pool.fail_warmup = True
        with pytest.raises(Conflict, match="warm-up sample 'warmup\\[0\\]' failed"):
            await h.lifecycle.load("a")
        await h.settle()
        assert h.model("a").versions[1].serving and len(h.pool.unloads) == 1  # the candidate was freed
    run(scenario())


def test_warm_up_samples_are_checked_against_the_signature(tmp_path: Path) -> None:
    from gateway.repository.layout import read_model
    from gateway.repository.repository import ModelVersion

    signature = Signature((TensorSpec("x", "FP32", (-1,)), TensorSpec("n", "INT64", (1,))),
                          (TensorSpec("y", "FP32", (-1,)),))
    cases = {
        "inputs: {x: {zero: true}}": "no data for input(s) n",
        "inputs: {x: {zero: true, shape: [3]}, n: {zero: true}, z: {zero: true}}": "no input(s) z",
        "inputs: {x: {zero: true}, n: {zero: true}}": "variable dimensions",
        "inputs: {x: {zero: true, shape: [3, 1]}, n: {zero: true}}": "does not fit",
        "inputs: {x: {zero: true, shape: [3], datatype: INT8}, n: {zero: true}}": "INT8 here and FP32",
    }
    for index, (inputs, fragment) in enumerate(cases.items()):
        _model(tmp_path, f"m{index}", config=CONFIG.split("inputs")[0] + f"warmup: [{{{inputs}}}]\n")
        entry = read_model(tmp_path, f"m{index}")
        assert entry is not None and entry.config is not None, entry
        mv = ModelVersion(f"m{index}", 1, entry, signature=signature)
        with pytest.raises(WarmupError, match=re.escape(fragment)):
            warmup_samples(mv)
    _model(tmp_path, "good", config=CONFIG.split("inputs")[0]
           + "warmup: [{name: w, inputs: {x: {file: x.bin, shape: [2]}, n: {zero: true}}}]\n")
    entry = read_model(tmp_path, "good")
    assert entry is not None
    [sample] = warmup_samples(ModelVersion("good", 1, entry, signature=signature))
    assert sample.name == "w" and sample.batch_size == 1
    x = next(i for i in sample.inputs if i.name == "x")
    assert x.file == str(tmp_path / "good" / "warmup" / "x.bin") and x.shape == (2,)


def test_fingerprints_follow_the_files_a_load_depends_on(tmp_path: Path) -> None:
    import os

    from gateway.repository.layout import fingerprint

    folder = _model(tmp_path, "a", (1, 2), CONFIG + "version_policy: {all: {}}\n")
    whole, one, two = fingerprint(folder), fingerprint(folder, 1), fingerprint(folder, 2)
    assert fingerprint(folder) == whole and one != two
    (folder / "2" / "model.onnx").write_bytes(b"new weights, new size")
    assert fingerprint(folder, 1) == one and fingerprint(folder, 2) != two and fingerprint(folder) != whole
    stat = (folder / "1" / "model.onnx").stat()
    os.utime(folder / "1" / "model.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # same size, touched
    assert fingerprint(folder, 1) != one
    one = fingerprint(folder, 1)
    (folder / "config.yaml").write_text(CONFIG + "version_policy: {all: {}}\ninstances: {count: 2}\n")
    assert fingerprint(folder, 1) != one  # the config is part of every version's load
    (folder / "warmup").mkdir()
    one = fingerprint(folder, 1)
    (folder / "warmup" / "x.bin").write_bytes(b"\0" * 16)
    assert fingerprint(folder, 1) != one


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "a\\b", "x\0y", "", "lost+found"])
def test_model_names_never_reach_outside_the_repository(tmp_path: Path, name: str) -> None:
    from gateway.contract import model_name_problem
    from gateway.repository.layout import read_model

    assert model_name_problem(name) is not None
    with pytest.raises(ValueError):
        read_model(tmp_path, name)
    assert model_name_problem("resnet-50_v1.2") is None
