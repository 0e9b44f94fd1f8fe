"""Models changing while the server runs, on real servers: Triton's model control modes and repository
extension (REST, gRPC, tritonclient), zero-downtime rollovers under continuous load, warm-up, and every
bad input of a load or unload.

Two servers of their own: one in explicit mode (the repository API decides), one in poll mode
(the repository's folders decide). Both run two frontends, so every switch is checked across
processes (tests/server.py).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import model_factory
from tests.helpers import run_client_script
from tests.integration.test_faults import SLOW_ITERATIONS, _slow_body
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

#: What a test waits for a state change at most (a deadline, not a threshold: it never fails a fast run).
PATIENCE_S = 60.0


def _until(condition: Callable[[], bool], what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{server.log()[-4000:]}")
        time.sleep(0.05)


def _index(server: ServerProcess, ready: bool | None = None) -> list[dict[str, str]]:
    body = {} if ready is None else {"ready": ready}
    response = httpx.post(f"{server.http_url}/v2/repository/index", json=body)
    assert response.status_code == 200, response.text
    index: list[dict[str, str]] = response.json()
    return index


def _entries(server: ServerProcess, name: str) -> list[dict[str, str]]:
    return [entry for entry in _index(server) if entry["name"] == name]


def _x(value: float) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}


# --- the explicit-mode server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("explicit") / "repo"
    repo.mkdir()
    model_factory.offset_model(repo, "rollover")
    model_factory.offset_model(repo, "idle")
    model_factory.offset_model(repo, "idle_grpc")
    model_factory.offset_model(repo, "tritonclient_grpc")
    model_factory.flat_identity_model(repo)
    model_factory.slow_model(repo)
    model_factory.broken_models(repo)
    (repo / "no_versions").mkdir()
    (repo / "no_versions" / "config.yaml").write_text("platform: onnx\nmax_batch_size: 4\n")
    warm = "warmup:\n  - {name: zeros, batch_size: 4, inputs: {x: {zero: true}}}\n" \
           "  - {name: from_file, batch_size: 2, count: 3, inputs: {x: {file: x.bin}}}\n"
    model_factory.offset_model(repo, "warm", config=warm)
    (repo / "warm" / "warmup").mkdir()
    (repo / "warm" / "warmup" / "x.bin").write_bytes(np.ones((2, 4), dtype=np.float32).tobytes())
    model_factory.offset_model(repo, "warm_bad", config="warmup: [{batch_size: 2, inputs: {x: {file: x.bin}}}]\n")
    (repo / "warm_bad" / "warmup").mkdir()
    (repo / "warm_bad" / "warmup" / "x.bin").write_bytes(b"\0" * 5)
    server = ServerProcess(repo, ["--model-control-mode", "explicit", "--load-model", "rollover",
                                  "--load-model", "flat_identity", "--load-model", "slow"])
    server.start()
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def triton(explicit: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{explicit.http_port}", network_timeout=120)
    yield client
    client.close()


def test_explicit_mode_starts_with_the_named_models_and_indexes_the_rest(explicit: ServerProcess) -> None:
    index = {entry["name"]: entry for entry in _index(explicit)}
    assert index["rollover"] == {"name": "rollover", "version": "1", "state": "READY", "reason": ""}
    assert index["idle"] == {"name": "idle"}  # in the repository, never loaded: Triton lists the name alone
    assert {e["name"] for e in _index(explicit, ready=True)} == {"rollover", "flat_identity", "slow"}
    assert httpx.get(f"{explicit.http_url}/v2/health/ready").status_code == 200  # unloaded models do not count
    response = httpx.post(f"{explicit.http_url}/v2/models/idle/infer", json=_x(1))
    assert response.status_code == 503 and "model 'idle' is not loaded" in response.json()["error"]
    extensions = httpx.get(f"{explicit.http_url}/v2").json()["extensions"]
    assert "model_repository" in extensions and "model_repository(unload_dependents)" in extensions


def test_the_index_lists_folders_added_and_removed_since_start(explicit: ServerProcess) -> None:
    model_factory.offset_model(explicit.repo, "late")
    assert {"name": "late"} in _index(explicit)
    shutil.rmtree(explicit.repo / "late")
    assert "late" not in {e["name"] for e in _index(explicit)}


def test_load_and_unload_with_tritonclient_http(explicit: ServerProcess,
                                                triton: httpclient.InferenceServerClient) -> None:
    assert not triton.is_model_ready("idle")
    triton.load_model("idle")
    assert triton.is_model_ready("idle")  # every frontend has the model once load returns
    index = {e["name"]: e for e in triton.get_model_repository_index()}
    assert index["idle"]["state"] == "READY"
    response = httpx.post(f"{explicit.http_url}/v2/models/idle/infer", json=_x(1))
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0] * 4

    triton.unload_model("idle", unload_dependents=True)
    assert not triton.is_model_ready("idle")
    assert _entries(explicit, "idle") == [{"name": "idle", "version": "1", "state": "UNAVAILABLE",
                                           "reason": "unloaded"}]
    response = httpx.post(f"{explicit.http_url}/v2/models/idle/infer", json=_x(1))
    assert response.status_code == 503
    assert response.json()["error"] == "model 'idle' is unloaded: it has no available versions"
    ready = httpx.get(f"{explicit.http_url}/v2/models/idle/ready")
    assert ready.status_code == 503 and ready.json()["reason"] == "unloaded"

    override = {"max_batch_size": 2, "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    triton.load_model("idle", config=json.dumps(override))
    config = triton.get_model_config("idle")
    assert config["max_batch_size"] == 2 and config["instance_group"][0]["count"] == 2
    triton.load_model("idle")  # a load without the override goes back to the folder's config
    assert triton.get_model_config("idle")["max_batch_size"] == 4
    log = explicit.log()
    assert "event=model_unloaded model=idle" in log and "event=model_instance_unloaded model=idle" in log


def test_warm_up_runs_before_the_model_is_ready(explicit: ServerProcess,
                                                triton: httpclient.InferenceServerClient) -> None:
    triton.load_model("warm")
    assert triton.is_model_ready("warm")
    assert "event=model_warmed_up model=warm version=1 samples=2" in explicit.log()
    warmup = triton.get_model_config("warm")["model_warmup"]
    assert [w["name"] for w in warmup] == ["zeros", "from_file"]
    assert warmup[1]["inputs"]["x"] == {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "x.bin"}
    with pytest.raises(InferenceServerException) as info:
        triton.load_model("warm_bad")
    message = info.value.message() or ""
    assert "failed to load 'warm_bad'" in message and "warm-up sample" in message and "has 5 bytes" in message
    assert not triton.is_model_ready("warm_bad")


@dataclass
class BadLoad:
    name: str
    path: str
    status: int
    fragments: list[str]
    body: dict[str, object] = field(default_factory=dict)


BAD = [
    BadLoad("unknown", "nothing/load", 404, ["failed to load 'nothing'", "no model folder 'nothing'"]),
    BadLoad("unknown unload", "nothing/unload", 404, ["failed to unload 'nothing'"]),
    BadLoad("dot-dot", "..%2Fexplicit/load", 400, ["model name '../explicit' is not a folder name"]),
    BadLoad("slash", "a%2Fb/load", 400, ["model name 'a/b' is not a folder name"]),
    BadLoad("slash unload", "rollover%2F..%2Fslow/unload", 400, ["is not a folder name"]),
    BadLoad("hidden", ".staging/load", 400, ["never serves"]),
    BadLoad("broken config", "bad_config/load", 409, ["failed to load 'bad_config'", "config.yaml",
                                                      "max_batch_size", "bogus_key"]),
    BadLoad("no versions", "no_versions/load", 409, ["failed to load 'no_versions'", "no version folder"]),
    BadLoad("missing file", "missing_file/load", 409, ["missing_file/1/model.onnx"]),
    BadLoad("corrupt file", "corrupt_file/load", 409, ["failed to load 'corrupt_file'", "corrupt_file/1/model.onnx"]),
    BadLoad("contradicting config", "contradicts/load", 409, ["contradicts/1", "INT32", "FP32"]),
    BadLoad("override not JSON", "idle/load", 400, ["Invalid config override for model 'idle'", "not JSON"],
            {"parameters": {"config": "{max_batch_size: 2"}}),
    BadLoad("override unknown field", "idle/load", 400, ["Invalid config override", "optimization"],
            {"parameters": {"config": json.dumps({"optimization": {}})}}),
    BadLoad("override not a string", "idle/load", 400, ["'config' must be a string"],
            {"parameters": {"config": {"max_batch_size": 2}}}),
    BadLoad("unknown parameter", "idle/load", 400, ["Unrecognized load parameter 'cfg'"], {"parameters": {"cfg": 1}}),
    BadLoad("file override", "idle/load", 501, ["file overrides are not supported"],
            {"parameters": {"file:1/model.onnx": "AAAA"}}),
    BadLoad("bad unload parameter", "idle/unload", 400, ["'unload_dependents' must be a boolean"],
            {"parameters": {"unload_dependents": "yes"}}),
]


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_bad_loads_and_unloads_say_why_and_disturb_nothing(explicit: ServerProcess, case: BadLoad) -> None:
    url = explicit.http_url
    logged = explicit.log().count("_refused ")
    response = httpx.post(f"{url}/v2/repository/models/{case.path}", json=case.body)
    assert response.status_code == case.status, response.text
    message = response.json()["error"]
    for fragment in case.fragments:
        assert fragment in message, (fragment, message)
    assert explicit.log().count("_refused ") == logged + 1  # one log line (model_load_refused / ..._unload_...)
    good = httpx.post(f"{url}/v2/models/flat_identity/infer",
                      json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [1, 2]
    assert httpx.get(f"{url}/v2/models/rollover/ready").status_code == 200


def test_failed_loads_are_logged_and_counted(explicit: ServerProcess) -> None:
    for name in ("corrupt_file", "bad_config"):
        httpx.post(f"{explicit.http_url}/v2/repository/models/{name}/load")
        assert f"event=model_load_failed model={name}" in explicit.log()
    entry = {e["name"]: e for e in _index(explicit)}["corrupt_file"]
    assert entry["state"] == "UNAVAILABLE" and "corrupt_file/1/model.onnx" in entry["reason"]
    metrics = httpx.get(explicit.metrics_url).text
    assert 'tensorgate_model_loads_total{model="corrupt_file",outcome="failure",version="1"}' in metrics


def test_unloading_a_model_with_requests_in_flight_lets_them_finish(explicit: ServerProcess) -> None:
    url = explicit.http_url
    results: list[httpx.Response] = []
    running = threading.Thread(target=lambda: results.append(
        httpx.post(f"{url}/v2/models/slow/infer", json=_slow_body(), timeout=120)))
    running.start()

    def in_flight() -> bool:
        return any(line.startswith('tensorgate_inflight_requests{model="slow"') and not line.endswith(" 0.0")
                   for line in httpx.get(explicit.metrics_url).text.splitlines())

    _until(in_flight, "the slow request to be in flight", explicit)
    unload = httpx.post(f"{url}/v2/repository/models/slow/unload")
    assert unload.status_code == 200, unload.text
    refused = httpx.post(f"{url}/v2/models/slow/infer", json=_slow_body())
    assert refused.status_code == 503 and "model 'slow' is unloaded" in refused.json()["error"]
    running.join(timeout=120)
    [answer] = results
    assert answer.status_code == 200, answer.text  # accepted before the unload: answered, not failed
    assert len(answer.json()["outputs"][0]["data"]) == 64 * 64
    _until(lambda: "event=model_instance_unloaded model=slow" in explicit.log(), "slow to be freed", explicit)
    assert SLOW_ITERATIONS > 0


def test_the_repository_api_over_grpc(explicit: ServerProcess) -> None:
    with grpc.insecure_channel(explicit.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["idle_grpc"].state == "" and index["rollover"].state == "READY"
        assert "idle_grpc" not in {m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models}
        request = pb.RepositoryModelLoadRequest(model_name="idle_grpc")
        request.parameters["config"].string_param = json.dumps({"max_batch_size": 3})
        stub.RepositoryModelLoad(request)
        assert stub.ModelReady(pb.ModelReadyRequest(name="idle_grpc")).ready
        assert stub.ModelConfig(pb.ModelConfigRequest(name="idle_grpc")).config.max_batch_size == 3
        unload = pb.RepositoryModelUnloadRequest(model_name="idle_grpc")
        unload.parameters["unload_dependents"].bool_param = False
        stub.RepositoryModelUnload(unload)
        assert not stub.ModelReady(pb.ModelReadyRequest(name="idle_grpc")).ready
        for bad, code, fragment in (
                (pb.RepositoryModelLoadRequest(model_name="nothing"), grpc.StatusCode.NOT_FOUND, "nothing"),
                (pb.RepositoryModelLoadRequest(model_name="../x"), grpc.StatusCode.INVALID_ARGUMENT, "folder name"),
                (pb.RepositoryModelLoadRequest(model_name="corrupt_file"), grpc.StatusCode.FAILED_PRECONDITION,
                 "corrupt_file/1/model.onnx")):
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(bad)
            assert info.value.code() == code and fragment in (info.value.details() or "")


def test_tritonclient_grpc_repository_calls(explicit: ServerProcess) -> None:
    """tritonclient.grpc registers protobuf types that clash with ours: it runs in a process of its own."""
    script = Path(__file__).with_name("tritonclient_repository_checks.py")
    result = run_client_script(script, explicit.grpc_address, "tritonclient_grpc")
    assert result == {"ok": True}, result


# --- zero downtime under load --------------------------------------------------------------------------------


class Load:
    """Client threads over REST and gRPC calling ``model`` without a version, until stopped; every answer kept."""

    def __init__(self, server: ServerProcess, model: str, threads_per_protocol: int = 2) -> None:
        self.server, self.model = server, model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        #: (protocol, when sent, offset the model added)
        self.answers: list[tuple[str, float, float]] = []
        self.threads = [threading.Thread(target=self._rest, daemon=True) for _ in range(threads_per_protocol)]
        self.threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(threads_per_protocol)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def count(self) -> int:
        with self.lock:
            return len(self.answers) + len(self.failures)

    def more(self, requests: int) -> None:
        """Wait until the clients have sent ``requests`` more requests."""
        target = self.count() + requests
        _until(lambda: self.count() >= target, f"{requests} more requests", self.server)

    def _record(self, protocol: str, sent: float, ok: bool, detail: str, offset: float = 0.0) -> None:
        with self.lock:
            self.outcomes[f"{protocol} {'ok' if ok else 'failed'}"] += 1
            if ok:
                self.answers.append((protocol, sent, offset))
            else:
                self.failures.append(f"{protocol}: {detail}")

    def _rest(self) -> None:
        with httpx.Client(base_url=self.server.http_url, timeout=60) as client:
            value = 0.0
            while not self.stop.is_set():
                value += 1
                sent = time.monotonic()
                try:
                    response = client.post(f"/v2/models/{self.model}/infer", json=_x(value))
                except httpx.HTTPError as exc:
                    self._record("rest", sent, False, repr(exc))
                    continue
                if response.status_code != 200:
                    self._record("rest", sent, False, f"{response.status_code} {response.text}")
                    continue
                self._record("rest", sent, True, "", response.json()["outputs"][0]["data"][0] - value)

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.server.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            value = 0.0
            while not self.stop.is_set():
                value += 1
                request = pb.ModelInferRequest(model_name=self.model)
                request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
                request.raw_input_contents.append(np.full(4, value, dtype=np.float32).tobytes())
                sent = time.monotonic()
                try:
                    response = stub.ModelInfer(request, timeout=60)
                except grpc.RpcError as exc:
                    self._record("grpc", sent, False, f"{exc.code()} {exc.details()}")
                    continue
                y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
                self._record("grpc", sent, True, "", float(y[0]) - value)

    def offsets_since(self, moment: float) -> set[float]:
        with self.lock:
            return {offset for _, sent, offset in self.answers if sent > moment}


def _report(load: Load, what: str) -> None:
    print(f"{what}: {dict(load.outcomes)}")  # the rollover evidence: run pytest with -s to see the counts


def test_zero_failed_requests_across_a_rollover_a_config_change_and_a_reload(
        explicit: ServerProcess, triton: httpclient.InferenceServerClient) -> None:
    repo = explicit.repo
    with Load(explicit, "rollover") as load:
        load.more(500)
        model_factory.offset_version(repo, "rollover", 2)  # latest: 1 now means version 2
        triton.load_model("rollover")
        switched = time.monotonic()
        load.more(500)
        assert load.offsets_since(switched) == {2.0}  # sent after the load returned: the new version answers
        assert _entries(explicit, "rollover") == [{"name": "rollover", "version": "2", "state": "READY",
                                                   "reason": ""}]

        override = {"max_batch_size": 4, "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
                    "dynamic_batching": {"max_queue_delay_microseconds": 100}}
        triton.load_model("rollover", config=json.dumps(override))
        assert triton.get_model_config("rollover")["instance_group"][0]["count"] == 2
        load.more(500)

        triton.load_model("rollover")  # a plain reload: a new instance of the same files
        load.more(500)
    _report(load, "explicit rollover, config change, reload")
    assert load.failures == [], load.failures[:10]
    assert load.outcomes["rest ok"] > 0 and load.outcomes["grpc ok"] > 0
    unloaded = explicit.log().count("event=model_instance_unloaded model=rollover")
    assert unloaded >= 3  # version 1, then each replaced instance of version 2


# --- the poll-mode server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poll(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("poll") / "repo"
    repo.mkdir()
    model_factory.offset_model(repo, "rollover")
    model_factory.offset_model(repo, "leaving")
    server = ServerProcess(repo, ["--model-control-mode", "poll", "--repository-poll-secs", "0.2"])
    server.start()
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


def test_poll_mode_refuses_the_api_with_tritons_message(poll: ServerProcess) -> None:
    response = httpx.post(f"{poll.http_url}/v2/repository/models/rollover/load")
    assert response.status_code == 503
    assert "explicit model load / unload is not allowed if polling is enabled" in response.json()["error"]


def test_poll_mode_rolls_over_changes_and_reloads_with_zero_failed_requests(poll: ServerProcess) -> None:
    repo = poll.repo
    with Load(poll, "rollover") as load:
        load.more(500)
        model_factory.offset_version(repo, "rollover", 2)
        _until(lambda: _entries(poll, "rollover") == [{"name": "rollover", "version": "2", "state": "READY",
                                                       "reason": ""}], "version 2 to replace version 1", poll)
        switched = time.monotonic()
        load.more(500)
        # Every frontend switched before the index could say so; answers sent after it come from version 2.
        assert load.offsets_since(switched) == {2.0}

        (repo / "rollover" / "config.yaml").write_text("platform: onnx\nmax_batch_size: 4\ninstances: {count: 2}\n")
        _until(lambda: httpx.get(f"{poll.http_url}/v2/models/rollover/config").json()["instance_group"][0]["count"]
               == 2, "the config change", poll)
        load.more(500)

        loads = poll.log().count("event=model_loaded model=rollover version=2")
        model_file = repo / "rollover" / "2" / "model.onnx"
        model_file.write_bytes(model_file.read_bytes())  # same model, new file: a reload
        _until(lambda: poll.log().count("event=model_loaded model=rollover version=2") > loads, "the reload", poll)
        load.more(500)
    _report(load, "poll rollover, config change, reload")
    assert load.failures == [], load.failures[:10]
    assert load.outcomes["rest ok"] > 0 and load.outcomes["grpc ok"] > 0


def test_poll_mode_unloads_removed_models_and_loads_new_ones(poll: ServerProcess) -> None:
    shutil.rmtree(poll.repo / "leaving")
    _until(lambda: not _entries(poll, "leaving"), "'leaving' to go", poll)
    assert httpx.post(f"{poll.http_url}/v2/models/leaving/infer", json=_x(1)).status_code == 404
    staging = poll.repo / ".arriving"
    model_factory.offset_model(staging.parent, staging.name)
    staging.rename(poll.repo / "arriving")
    _until(lambda: httpx.get(f"{poll.http_url}/v2/models/arriving/ready").status_code == 200, "'arriving'", poll)
    (poll.repo / "arriving" / "config.yaml").write_text("platform: onnx\nmax_batch_size: -1\n")
    _until(lambda: "a reload failed" in _entries(poll, "arriving")[0]["reason"], "the broken edit to show", poll)
    response = httpx.post(f"{poll.http_url}/v2/models/arriving/infer", json=_x(1))
    assert response.status_code == 200  # the broken edit changed nothing that serves
