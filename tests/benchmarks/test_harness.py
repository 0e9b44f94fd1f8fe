"""The benchmark harness works: models compute what they should, a CI-sized run over every
protocol writes a complete report (markdown, JSON, PNG), and the Python fallback client and an
external server (``--url``) work. Nothing here checks a timing: benchmarks measure, tests don't.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import offline, wrk
from benchmarks.inputs import BenchError
from benchmarks.models import MODELS, build_onnx, reference, sample_input
from benchmarks.profile import summarize
from benchmarks.report import Offline, Point, compare, served_table
from benchmarks.repository import ServingOptions, prepare_run_repo
from benchmarks.runner import RunConfig, run
from benchmarks.server import BenchServer
from benchmarks.stats import StatsSnapshot
from gateway.cli import main as tensorgate
from gateway.repository.config import METADATA_PLATFORM
from tests.server import SECRETS, ServerProcess

pytestmark = pytest.mark.slow

TINY = MODELS["mlp_tiny"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def test_onnx_models_compute_the_reference(tmp_path: Path) -> None:
    for spec in (TINY, MODELS["identity"]):
        path = tmp_path / spec.name / "model.onnx"
        build_onnx(spec, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = sample_input(spec, 3)
        [y] = session.run([spec.output_name], {spec.input_name: x})
        np.testing.assert_allclose(y, reference(spec, x), rtol=1e-4, atol=1e-5)


def test_torchscript_matches_onnx(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.models import build_torchscript

    build_torchscript(TINY, tmp_path / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load
        module = torch.jit.load(str(tmp_path / "model.pt"))
    x = sample_input(TINY, 3)
    with torch.inference_mode():
        y = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, reference(TINY, x), rtol=1e-4, atol=1e-5)


def test_the_device_runner_moves_the_batch_in_and_the_outputs_back(tmp_path: Path) -> None:
    """``--device`` times torch models through ``torch_device_runner``; run here on the CPU, its answers
    are host tensors with the reference's values (on a GPU the same code adds the two copies)."""
    torch = pytest.importorskip("torch")
    from benchmarks.models import build

    x = sample_input(TINY, 3)
    for fmt, name in (("torchscript", "model.pt"), ("torch_export", "model.pt2")):
        build(TINY, fmt, tmp_path / fmt / name)
        framework, run = offline.torch_device_runner(fmt, tmp_path / fmt / name, 1, "cpu")
        assert framework.endswith(" on cpu")
        y = run([("input", x)])
        [y] = y if isinstance(y, list) else [y]
        assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
        np.testing.assert_allclose(y.numpy(), reference(TINY, x), rtol=1e-4, atol=1e-5)


def test_the_offline_runners_time_the_linear_kernel_the_server_uses(tmp_path: Path) -> None:
    """TorchScript and torch.export are timed with their linear layers on oneDNN on packed weights, as
    served by default, without the copies, or on aten, as ``--linear-kernel`` says; all give the reference's values."""
    pytest.importorskip("torch")
    from benchmarks.models import build

    x = sample_input(TINY, 3)
    for fmt, name in (("torchscript", "model.pt"), ("torch_export", "model.pt2")):
        build(TINY, fmt, tmp_path / fmt / name)
        for kernel in ("onednn", "onednn_unpacked", "aten"):
            framework, run = offline.LINEAR_FORMATS[fmt](tmp_path / fmt / name, 1, True, linear_kernel=kernel)
            assert framework.startswith("torch ")
            on_onednn = re.search(r", linear layers on oneDNN \((\d+) of (\d+) on packed weights\)$", framework)
            if kernel == "aten":
                assert "oneDNN" not in framework
            else:
                assert on_onednn and on_onednn[2] != "0", framework
                assert on_onednn[1] == (on_onednn[2] if kernel == "onednn" else "0"), framework
            y = run([("input", x)])
            [y] = y if isinstance(y, list) else [y]
            np.testing.assert_allclose(np.asarray(y), reference(TINY, x), rtol=1e-4, atol=1e-5)


def test_a_device_goes_into_the_served_config_and_bad_ones_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.repository import config_text

    options = ServingOptions(device="cuda:1", instances=2)
    assert "instances: {count: 2, device: cuda:1}" in config_text(TINY, "torchscript", options)
    assert "instances 2 on cuda:1" in options.describe()
    assert tensorgate(["bench", "--device", "gpu0"]) != 0
    assert "--device gpu0: give cpu or cuda:N" in capsys.readouterr().err
    assert tensorgate(["bench", "--device", "cuda:0", "--format", "onnx"]) != 0
    assert "puts torchscript and torch_export models on a GPU, not onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own error, exit status 2
        offline.main(["--format", "onnx", "--model-file", "m.onnx", "--inputs", "{}", "--threads", "1",
                      "--batch-sizes", "1", "--device", "cuda:0"])
    assert "only torchscript and torch_export are timed off the CPU" in capsys.readouterr().err


@pytest.mark.slow
def test_torch_export_and_aoti_match_onnx_through_their_offline_runners(tmp_path: Path) -> None:
    """The two .pt2 formats built from the same weights, called as the offline measurement calls them."""
    pytest.importorskip("torch")
    from benchmarks.models import build
    from benchmarks.offline import RUNNERS, format_of

    x = sample_input(TINY, 3)
    for fmt in ("torch_export", "torch_aoti"):
        build(TINY, fmt, tmp_path / fmt / "model.pt2")
        assert format_of(tmp_path / fmt) == fmt
        _, run = RUNNERS[fmt](tmp_path / fmt / "model.pt2", 1, True)
        result = run([("input", x)])
        y = result[0] if isinstance(result, list) else result  # the loader answers a flat list
        np.testing.assert_allclose(np.asarray(y), reference(TINY, x), rtol=1e-4, atol=1e-5)


def test_full_run_through_the_cli(tmp_path: Path, cache: Path) -> None:
    """``tensorgate bench`` starts a server, drives all three protocols at two concurrencies,
    measures the offline limit and writes every field, the histogram, the table and the PNG."""
    out = tmp_path / "results"
    code = tensorgate(["bench", "--model", "mlp_tiny", "--protocol", "rest-json,rest-binary,grpc",
                       "--concurrency", "1,2", "--requests", "40", "--warmup", "0", "--offline-time", "0.05",
                       "--output-dir", str(out), "--name", "ci", "--model-cache", str(cache)])
    assert code == 0
    document = json.loads((out / "ci.json").read_text())
    points = document["points"]
    assert [(p["protocol"], p["concurrency"]) for p in points] == [
        (proto, c) for proto in ("rest-json", "rest-binary", "grpc") for c in (1, 2)]
    for p in points:
        assert p["errors"] == 0, p["error_samples"]
        assert p["requests"] >= 40
        assert p["requests_per_s"] > 0 and p["inferences_per_s"] == pytest.approx(p["requests_per_s"])
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= p["max_ms"]
        histogram = {int(size): n for size, n in p["batch_histogram"].items()}
        assert sum(histogram.values()) == p["executions"] > 0
        assert max(histogram) <= p["concurrency"]
        assert p["mean_batch"] == pytest.approx(sum(s * n for s, n in histogram.items()) / p["executions"])
        # /proc counts in clock ticks, so a CI-sized run may read 0 s; only presence is checked.
        assert min(p["loadgen_cpu_s"], p["gateway_cpu_s"], p["workers_cpu_s"], p["other_cpu_s"]) >= 0
        comparison = p["comparison"]
        assert comparison["reference_batch"] == p["concurrency"]
        assert comparison["offline_rows_s_at_reference"] > 0 and comparison["offline_rows_s_at_server_batches"] > 0
        expected_generator = "wrk" if p["protocol"] != "grpc" and wrk.available() else None
        if expected_generator:
            assert p["generator"] == "wrk"
    offline = document["offline"]["mlp_tiny"]
    assert offline["threads"] == 1 and {"1", "2"} <= set(offline["batch_ms"])
    assert set(document["machine"]) >= {"cpus", "cpu_model", "memory_gib"}
    assert {"python", "numpy", "onnxruntime", "grpcio"} <= set(document["versions"])
    text = (out / "ci.md").read_text()
    assert "tensorgate bench --model mlp_tiny" in text
    for heading in ("## Served", "## Against the model's offline limit", "## Offline", "## Executed batch sizes",
                    "![throughput vs p99](ci.png)"):
        assert heading in text
    assert text.count("| mlp_tiny | rest-binary |") == 2 * 2  # the served and the comparison tables
    assert (out / "ci.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Iterator[BenchServer]:
    root = tmp_path_factory.mktemp("bench-server")
    repo = prepare_run_repo(root / "repo", [(TINY, "onnx")], ServingOptions(max_queue_delay_ms=2), cache)
    server = BenchServer(repo, root / "server.log")
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def test_python_fallback_against_a_running_server(running_server: BenchServer, tmp_path: Path,
                                                  cache: Path) -> None:
    progress = io.StringIO()
    output = run(RunConfig(models=["mlp_tiny"], protocols=["rest-json", "rest-binary"], concurrency=[3],
                           duration=1.0, warmup=0, url=running_server.http_url,
                           grpc_target=running_server.grpc_address, server_pid=running_server.pid,
                           loadgen="python", offline=False, output_dir=tmp_path, name="fallback",
                           cache=cache, progress=progress))
    for point in output.report.points:
        assert point.generator.startswith("asyncio HTTP/1.1")
        assert point.errors == 0 and point.requests > 0 and point.gateway_cpu_s is not None
        assert point.comparison is None
    assert "mlp_tiny rest-json c=3" in progress.getvalue()
    text = output.markdown.read_text()
    assert "Python fallback client" in text and "external, http://127.0.0.1" in text


def test_a_server_with_a_key_on_inference(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--api-key-header: every REST inference request carries the key, which no command line or result holds."""
    key = secrets.token_hex(16)
    SECRETS.add(key)
    repo = prepare_run_repo(tmp_path / "repo", [(TINY, "onnx")], ServingOptions(max_queue_delay_ms=2), cache)
    server = ServerProcess(repo, ["--protect", "inference:x-api-key"], env={"TENSORGATE_API_KEYS": key})
    server.start()
    try:
        base = RunConfig(models=["mlp_tiny"], protocols=["rest-binary"], concurrency=[2], duration=1.0, warmup=0,
                         url=server.http_url, grpc_target=server.grpc_address, offline=False, output_dir=tmp_path,
                         cache=cache, progress=io.StringIO())
        with pytest.raises(BenchError, match="HTTP 401: the inference API requires a key in the x-api-key header"):
            run(replace(base, name="nokey"))
        monkeypatch.setenv("TENSORGATE_BENCH_API_KEY", key)
        for loadgen in ("wrk", "python"):
            output = run(replace(base, name=loadgen, loadgen=loadgen, api_key_header="x-api-key"))
            [point] = output.report.points
            assert point.errors == 0 and point.requests > 0, loadgen
            results = output.markdown.read_text() + output.markdown.with_suffix(".json").read_text()
            assert key not in results
    finally:
        assert server.stop() == 0, server.log()


def test_comparison_with_the_offline_limit() -> None:
    point = Point(model="m", base_model="m", format="onnx", protocol="grpc", concurrency=4, rows_per_request=1,
                  generator="g", requests=100, errors=0, elapsed_s=1.0, requests_per_s=100.0,
                  inferences_per_s=100.0, p50_ms=12.0, p90_ms=13.0, p99_ms=20.0, mean_ms=12.0, max_ms=25.0,
                  executions=30, mean_batch=10 / 3, batch_histogram={2: 10, 4: 20}, server_queue_ms=1.0,
                  server_compute_ms=8.0, server_failures=0, loadgen_cpu_s=0.1, gateway_cpu_s=0.5,
                  workers_cpu_s=0.5, other_cpu_s=0.0)
    c = compare(point, Offline("fw", 1, {1: 5.0, 2: 6.0, 4: 10.0}), max_batch_size=64)
    assert c.reference_batch == 4
    assert c.offline_rows_s_at_reference == pytest.approx(400.0)
    assert c.served_vs_reference == pytest.approx(0.25)
    assert c.p99_vs_reference_ms == pytest.approx(2.0)
    # 10 batches of 2 rows at 6 ms and 20 of 4 at 10 ms: 100 rows in 260 ms.
    assert c.offline_rows_s_at_server_batches == pytest.approx(100 / 0.26)
    assert c.offline_ms_per_server_batch == pytest.approx(260 / 30)
    assert c.overhead_p50_ms == pytest.approx(12.0 - 260 / 30)
    # 30 batches of 8 ms in a 1 s run: the instance computed 24% of the time.
    assert point.compute_busy == pytest.approx(0.24)
    assert "| 8.00 | 24% | 0.1 |" in served_table([point])
    assert replace(point, executions=0).compute_busy is None


def test_stats_delta_and_profile_summary(tmp_path: Path) -> None:
    before = StatsSnapshot(inference_count=10, execution_count=5, batches={1: (2, 200), 4: (2, 800)})
    after = StatsSnapshot(inference_count=22, execution_count=8, batches={1: (2, 200), 4: (5, 2000)})
    delta = after.minus(before)
    assert delta.histogram() == {4: 3} and delta.mean_batch == 4.0
    assert delta.mean_compute_ms == pytest.approx(400 / 1e6)
    raw = tmp_path / "raw.txt"
    raw.write_text("main (a.py);loop (b.py);parse (c.py) 30\nmain (a.py);loop (b.py) 10\n")
    summary = summarize(raw, duration=1.0)
    assert summary["samples"] == 40 and summary["busy"] == pytest.approx(0.4)
    assert summary["self"][0] == ("parse (c.py)", 0.75)
    assert summary["inclusive"] == [("parse (c.py)", 0.75)]  # frames on every stack are left out
    native = tmp_path / "native.txt"
    native.write_text("run (loop.c);epoll_wait (libc.so.6) 60\nrun (loop.c);handle (app.py);writev (libc.so.6) 40\n")
    assert summarize(native, duration=1.0, native=True)["self"] == [("writev (libc.so.6)", 1.0)]


@pytest.mark.parametrize("model", ["digits_tflite", "digits_tflite_int8"])
def test_offline_times_tflite_models_through_the_servers_adapter(shared_repo: Path, model: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The any-model bench finds a TFLite model by the platform the server reports, and times it offline."""
    assert offline.PLATFORMS[METADATA_PLATFORM["tflite"]] == "tflite"
    inputs = {"batched": True, "tensors": [{"name": "input", "datatype": "FP32", "shape": [64]}]}
    assert offline.main(["--format", "tflite", "--model-file", str(shared_repo / model / "1" / "model.tflite"),
                         "--inputs", json.dumps(inputs), "--threads", "1", "--batch-sizes", "1,5,64",
                         "--min-time", "0.01"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(offline.RESULT_PREFIX))
    document = json.loads(line[len(offline.RESULT_PREFIX):])
    assert document["framework"].startswith("ai-edge-litert ") and document["threads"] == 1
    assert sorted(document["batches"], key=int) == ["1", "5", "64"]
    assert all(b["median_ms"] > 0 for b in document["batches"].values())
