"""``--metrics-port 0`` turns metrics off: no metrics listener, inference unaffected."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests import model_factory
from tests.server import ServerProcess


def test_metrics_port_zero_serves_without_metrics(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_factory.flat_identity_model(repo)
    server = ServerProcess(repo, ["--metrics-port", "0"])
    server.start()
    try:
        r = httpx.post(f"{server.http_url}/v2/models/flat_identity/infer",
                       json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
        assert r.status_code == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", server.metrics_port)) != 0  # nothing listens there
        assert "metrics_port=0" in server.log()
    finally:
        assert server.stop() == 0, server.log()
