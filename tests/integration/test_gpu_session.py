"""benchmarks/gpu_session.sh, the GPU machine's one prepared script, runs here on the CPU.

GPU sessions are rare and short: the script must not break between them. Here it runs every step
on the CPU with this venv's Python, a kit holding only the digits bundle (this venv has the wheels
the GPU machine lacks) and one-second points; what it measures is not checked, only that every
step ran and wrote its tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DIGITS_FORMATS = ("onnx", "torchscript", "torch_export", "jax")  # torch_aoti's compile is gpu_check's test


def test_the_gpu_session_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_model_repo.py"), "--save-digits",
                    str(kit / "digits.npz")], check=True, capture_output=True)
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "DURATION": "1", "FRONTENDS": "2",
           "CONCURRENCY": "2", "KIT": str(kit), "OUT": str(out), "DIGITS_FORMATS": ",".join(DIGITS_FORMATS)}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + log
    assert "all steps passed" in log
    summary = (out / "summary.md").read_text()
    for fmt in DIGITS_FORMATS:
        row = next(line for line in summary.splitlines() if line.startswith(f"| digits_{fmt} |"))
        assert "| cpu | host | ok |" in row, row
    for model in ("mlp_small", "mlp_large"):
        serving = (out / "bench" / f"{model}.md").read_text()
        for protocol in ("rest-binary", "grpc"):
            assert f"| {model}_torchscript | {protocol} | 2 |" in serving, serving
    frontends = (out / "bench" / "frontends-2.md").read_text()
    assert frontends.count("| frontend | `python -m gateway.frontend") == 2, frontends
    assert "## frontends-2.md" in summary
