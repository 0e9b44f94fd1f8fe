"""Each framework lives in its own worker process: the gateway imports none, each worker only its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import ServerProcess

pytestmark = pytest.mark.slow

FRAMEWORK_MODULES = ("onnxruntime", "torch", "tensorflow", "jax", "jaxlib", "onnx", "ai_edge_litert")
DIGITS = ["digits_onnx", "digits_torchscript", "digits_torch_export", "digits_torch_aoti", "digits_savedmodel",
          "digits_jax", "digits_tflite", "digits_tflite_int8"]


def test_gateway_process_imports_no_framework_with_every_platform(shared_repo: Path) -> None:
    """Serve the shared repository (every platform) in-process in a child interpreter, run a
    request through each digits model, and list the frameworks the gateway process imported."""
    ports = ServerProcess(shared_repo)
    script = f"""
import asyncio, os, signal, sys, urllib.request
from pathlib import Path
from gateway.server import serve
from gateway.settings import Settings

async def main():
    task = asyncio.create_task(serve(Settings(model_repo=Path({str(shared_repo)!r}), http_port={ports.http_port},
                                              grpc_port={ports.grpc_port}, metrics_port={ports.metrics_port})))
    for _ in range(1200):
        await asyncio.sleep(0.05)
        try:
            await asyncio.to_thread(urllib.request.urlopen, "http://127.0.0.1:{ports.http_port}/v2/health/ready")
            break
        except OSError:
            pass
    data = str([0.5] * 64)
    body = ('{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":' + data + '}}]}}').encode()
    for model in {DIGITS!r}:
        request = urllib.request.Request(f"http://127.0.0.1:{ports.http_port}/v2/models/{{model}}/infer", body)
        assert (await asyncio.to_thread(urllib.request.urlopen, request)).status == 200, model
    print(sorted(m for m in {FRAMEWORK_MODULES!r} if m in sys.modules))
    os.kill(os.getpid(), signal.SIGTERM)
    await task

asyncio.run(main())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_each_worker_imports_only_its_own_framework(server: ServerProcess) -> None:
    """The shared server's workers, one per framework, each mapped only its own framework's libraries."""
    own = {"onnxruntime": "onnxruntime", "torch": "torch", "tensorflow": "tensorflow", "jax": "jaxlib",
           "tflite": "ai_edge_litert"}
    seen = {}
    for pid in server.worker_pids():
        framework = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3].decode()
        maps = Path(f"/proc/{pid}/maps").read_text()
        loaded = {name for name in own.values() if f"/site-packages/{name}/" in maps}
        seen[framework] = loaded
    assert seen == {framework: {package} for framework, package in own.items()}, seen
