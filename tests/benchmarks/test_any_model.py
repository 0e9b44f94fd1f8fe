"""``tensorgate bench --url`` on models the harness does not know: requests generated from the
server's metadata (any datatype, several inputs, variable dims from --shape, rows from
--batch-size), checked once before the load, the server's processes found from its port with
their CPU, and the offline limit from --model-repo. Behaviour only: no timing is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from benchmarks.inputs import (
    NUMPY_DTYPES,
    Signature,
    Tensor,
    TensorInfo,
    generate,
    json_data,
    raw_bytes,
    request_shapes,
)
from benchmarks.processes import ProcessTree, find_server, is_loopback, role_of
from benchmarks.server import free_port
from gateway.cli import main as tensorgate
from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "scaled_tokens"


def scaled_tokens_model(repo: Path) -> None:
    """``scaled_tokens``: y[b, n] = float(tokens[b, n]) * scale[b, 0], from tokens INT64 [batch, n] (a variable dim)
    and scale FP32 [batch, 1]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["tokens"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["as_float", "scale"], ["y"])],
        MODEL,
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "n"]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model_factory._save(graph, repo / MODEL / "1" / "model.onnx")
    model_factory._write_config(repo / MODEL, "platform: onnx\nmax_batch_size: 8\n"
                                "dynamic_batching: {max_queue_delay_ms: 2}\nparameters: {intra_op_threads: 1}\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-any") / "repo"
    root.mkdir()
    scaled_tokens_model(root)
    model_factory.identity_model(root)
    model_factory.failing_model(root)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(repo)
    process.start()
    yield process
    assert process.stop() == 0, process.log()


def bench(server: ServerProcess, *args: str) -> int:
    return tensorgate(["bench", "--url", server.http_url, "--grpc-url", server.grpc_address, "--warmup", "0",
                       "--concurrency", "2", "--requests", "30", *args])


def test_bench_url_on_an_unknown_two_input_model(server: ServerProcess, repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = bench(server, "--model", MODEL, "--shape", "tokens:5", "--batch-size", "2",
                 "--protocol", "rest-json,rest-binary,grpc", "--model-repo", str(repo), "--offline-time", "0.05",
                 "--output-dir", str(out), "--name", "any")
    assert code == 0
    document = json.loads((out / "any.json").read_text())
    assert "tokens INT64 [2, 5]" in document["models"][MODEL] and "scale FP32 [2, 1]" in document["models"][MODEL]
    assert "max_batch_size 8" in document["models"][MODEL]
    points = document["points"]
    assert [p["protocol"] for p in points] == ["rest-json", "rest-binary", "grpc"]
    assert server.process is not None
    for p in points:
        assert p["errors"] == 0 and p["server_failures"] == 0, p["error_samples"]
        assert p["requests"] >= 30 and p["requests_per_s"] > 0
        assert p["inferences_per_s"] == pytest.approx(2 * p["requests_per_s"])
        histogram = {int(size): n for size, n in p["batch_histogram"].items()}
        assert sum(histogram.values()) == p["executions"] > 0
        assert all(size % 2 == 0 and size <= 8 for size in histogram)  # whole requests of 2 rows, at most 8
        # The server was found from its port: the gateway (the root) and its ONNX Runtime worker.
        processes = {c["pid"]: c for c in p["processes"]}
        assert processes[server.process.pid]["role"] == "server"
        assert not processes[server.process.pid]["worker"]
        assert [c["role"] for c in p["processes"] if c["worker"]] == ["runtime worker onnxruntime"]
        assert min(c["cpu_s"] for c in p["processes"]) >= 0  # clock ticks: a short run may read 0
        assert p["gateway_cpu_s"] == pytest.approx(sum(c["cpu_s"] for c in p["processes"] if not c["worker"]))
        comparison = p["comparison"]
        assert comparison["reference_batch"] == 4  # concurrency 2 x 2 rows
        assert comparison["offline_rows_s_at_server_batches"] > 0
    offline = document["offline"][MODEL]
    assert {1, 4} | {int(s) for p in points for s in p["batch_histogram"]} == {int(s) for s in offline["batch_ms"]}
    text = (out / "any.md").read_text()
    assert "## Server CPU per process" in text and "**gateway** (all but the workers)" in text
    assert "runtime worker onnxruntime" in text and "gateway CPU µs/req" in text
    assert f"from the socket listening on port {server.http_port}" in text
    assert "intra-op thread(s) from the model config" in text


def test_every_datatype_over_every_protocol(server: ServerProcess, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The identity model's FP32, INT64, BYTES, BOOL and FP16 inputs, each [batch, -1]; no model repo given."""
    shapes = [arg for suffix, _, _ in model_factory.IDENTITY_TENSORS for arg in ("--shape", f"in_{suffix}:3")]
    code = bench(server, "--model", "identity", *shapes, "--protocol", "rest-json,rest-binary,grpc",
                 "--concurrency", "1", "--requests", "10", "--loadgen", "python", "--output-dir", str(tmp_path),
                 "--name", "dtypes")
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "dtypes.json").read_text())
    assert all(p["errors"] == 0 and p["requests"] == 10 for p in document["points"])
    assert document["offline"] == {}
    assert any("Offline limit of identity not measured: its file is not at hand (give --model-repo" in note
               for note in document["notes"])
    assert "in_bytes BYTES [1, 3]" in document["models"]["identity"]


def test_a_variable_dim_without_shape_is_named(server: ServerProcess, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = bench(server, "--model", MODEL, "--output-dir", str(tmp_path))
    assert code == 2
    err = capsys.readouterr().err
    assert f"input 'tokens' of model '{MODEL}' has a variable dim (metadata shape [-1, -1])" in err
    assert "--shape tokens:N" in err
    assert not list(tmp_path.iterdir())  # refused before any load or report


def test_an_unknown_model_gets_the_servers_error(server: ServerProcess, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = bench(server, "--model", "no_such_model", "--output-dir", str(tmp_path))
    assert code == 2
    err = capsys.readouterr().err
    assert "model 'no_such_model' at http://127.0.0.1" in err and "HTTP 4" in err
    assert f"the server lists: failing, identity, {MODEL}" in err


def test_bad_shapes_and_refused_requests(server: ServerProcess, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(server, "--model", MODEL, "--shape", "tokens:5", "--shape", "nope:1") == 2
    assert "--shape names 'nope', not an input of the model (inputs: scaled_tokens: tokens, scale)" in \
        capsys.readouterr().err
    assert bench(server, "--model", MODEL, "--shape", "tokens:5", "--shape", "scale:2") == 2
    assert "--shape scale:2 does not fit input 'scale'" in capsys.readouterr().err
    assert bench(server, "--model", MODEL, "--shape", "tokens:5", "--batch-size", "9") == 2
    assert "--batch-size 9 exceeds model 'scaled_tokens''s max_batch_size 8" in capsys.readouterr().err
    # The failing model's metadata accepts any length, but it only runs on 3 elements: the check
    # inference before the load shows the server's own error.
    assert bench(server, "--model", "failing", "--shape", "x:4", "--protocol", "grpc") == 2
    err = capsys.readouterr().err
    assert "model 'failing': the server refused the generated grpc request:" in err
    assert bench(server, "--model", "failing", "--shape", "x:4", "--protocol", "rest-json") == 2
    assert "the server refused the generated rest-json request: HTTP 5" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_port_leads_to_the_server(server: ServerProcess) -> None:
    assert server.process is not None
    pid, how = find_server(server.http_port)
    assert pid == server.process.pid, how
    assert find_server(server.grpc_port)[0] == server.process.pid
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("10.1.2.3")
    assert role_of(7, 1, "/usr/bin/python3 -m runtimes.worker onnxruntime 5") == ("runtime worker onnxruntime", True)
    assert role_of(7, 1, "/opt/tritonserver/backends/python/triton_python_backend_stub m.py") == \
        ("python backend stub m.py", True)
    assert role_of(7, 1, "python -m mlserver_worker", ("mlserver_worker",)) == ("worker", True)
    assert role_of(1, 1, "tritonserver --model-repository /models") == ("server", False)


#: Two children of one parent listening on one port with SO_REUSEPORT, as frontend processes will.
FRONTENDS = """
import os, socket, sys, time
for _ in range(2):
    if os.fork() == 0:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", int(sys.argv[1])))
        s.listen()
        os.write(1, b"listening\\n")  # one write: the two children's lines never interleave
        time.sleep(60)
        os._exit(0)
time.sleep(60)
"""


def test_frontends_sharing_a_port_stand_for_their_parent() -> None:
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-c", FRONTENDS, str(port)], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        assert [parent.stdout.readline() for _ in range(2)] == [b"listening\n"] * 2
        pid, how = find_server(port)
        assert pid == parent.pid, how
        processes = ProcessTree(parent.pid).processes()
        assert [(p.role, p.worker) for p in processes] == [("server", False), ("child", False), ("child", False)]
        assert how.endswith(f"(listeners {', '.join(str(p.pid) for p in sorted(processes[1:], key=lambda p: p.pid))})")
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_generated_data_per_datatype() -> None:
    rng = np.random.default_rng(0)
    for datatype in NUMPY_DTYPES:
        x = generate(datatype, (2, 3), rng)
        assert x.shape == (2, 3)
        assert len(json.loads(json.dumps(json_data(Tensor("t", datatype, x))))) == 6
        if datatype == "BYTES":
            assert all(isinstance(e, bytes) and 1 <= len(e) <= 8 and e.isalpha() for e in x.reshape(-1))
            raw = raw_bytes(Tensor("b", datatype, x))
            assert int.from_bytes(raw[:4], "little") == len(x[0, 0]) and len(raw) == 6 * 4 + sum(map(len, x.flat))
            continue
        assert x.dtype.name == NUMPY_DTYPES[datatype]
        values = x.astype(np.float64)
        if datatype.startswith(("FP", "BF")):
            assert values.min() >= 0 and values.max() <= 1
        elif datatype != "BOOL":
            assert values.min() >= 0 and values.max() < 10 and np.array_equal(values, np.round(values))
        assert len(raw_bytes(Tensor("t", datatype, x))) == 6 * x.dtype.itemsize
    # A model without a config (KServe runtimes): every input starting with -1 means it batches.
    signature = Signature("m", ("1",), "", (TensorInfo("a", "FP32", (-1, -1, 3)),), (), True, None, {})
    assert request_shapes(signature, {"a": (4, 3)}, rows=5) == {"a": (5, 4, 3)}
    flat = Signature("f", ("1",), "", (TensorInfo("a", "FP32", (-1,)),), (), False, 0, {})
    assert request_shapes(flat, {"a": (7,)}, rows=1) == {"a": (7,)}
