"""scripts/render_dashboard.py, on a short schedule: it runs the server, Prometheus and the load,
fetches every dashboard query and writes a PNG (docs/dashboard.png is the long run of it)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests import model_factory
from tests.observability.observability import NO_PROMETHEUS, PROMETHEUS
from tests.server import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS),
              pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                 reason="matplotlib is not installed (the bench extra)")]


def test_render_dashboard_writes_a_png(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_factory.delay_model(repo, "delay", config="max_batch_size: 16\ndynamic_batching: {max_queue_delay_ms: 5}\n")
    out = tmp_path / "dashboard.png"
    result = subprocess.run(
        [sys.executable, "scripts/render_dashboard.py", "--model-repo", str(repo), "--levels", "1,2",
         "--step-seconds", "6", "--tail-seconds", "5", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed the onnxruntime worker" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
