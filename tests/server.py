"""Start the real ``tensorgate serve`` in a subprocess on free loopback ports, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.server import free_port, worker_pids

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    """A running server; ``log`` accumulates its stderr once it has stopped."""

    repo: Path
    extra_args: list[str] = field(default_factory=list)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it has finished loading its models."""
        self.log_path = self.repo.parent / f"server-{self.http_port}.log"
        command = [sys.executable, "-m", "gateway.cli", "serve", "--model-repo", str(self.repo),
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--metrics-port", str(self.metrics_port), *self.extra_args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                 # Several frontends, so every integration test runs the
                                                 # multi-process path (the 2-core default would be one).
                                                 "TENSORGATE_FRONTENDS": os.environ.get("TENSORGATE_FRONTENDS", "2")})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            text = self.log()
            if any(f"{key}{event}" in text for key in ("event=", '"event":"')
                   for event in ("server_ready", "server_started_not_ready")):
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server did not finish loading in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """The pids of the server's runtime worker processes (its children running runtimes.worker)."""
        assert self.process is not None
        return worker_pids(self.process.pid)

    def stop(self) -> int:
        """SIGTERM, wait for a clean exit, and return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def wait_until_ready(self, model: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.http_url}/v2/models/{model}/ready").status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"model {model} not ready after {timeout} s:\n{self.log()}")
