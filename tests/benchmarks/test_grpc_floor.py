"""benchmarks/grpc_floor.py keeps measuring real gRPC: the real tritonclient (in the benchmark's own
load process) gets the canned answer from every server, or the run fails. Nothing here checks a timing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.server import free_port

pytestmark = pytest.mark.slow


def test_every_server_answers_tritonclient_and_the_table_is_complete() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.grpc_floor", "--rounds", "1", "--duration", "1", "--warmup", "0.5",
         "--concurrency", "2", "--port", str(free_port())],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| 1 |")]
    assert sorted(row[2].strip() for row in rows) == ["aio", "h2", "native"]
    for row in rows:
        assert float(row[3].replace(",", "")) > 0  # calls/s: every call got a (1, 10) FP32 answer
