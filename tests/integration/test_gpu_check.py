"""benchmarks/gpu_check.py runs on the CPU in CI, so that it keeps working for the GPU machines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"digits_onnx": "onnx", "digits_torchscript": "torchscript", "digits_torch_export": "torch_export",
          "digits_torch_aoti": "torch_aoti", "digits_savedmodel": "savedmodel", "digits_jax": "jax",
          "digits_tflite": "tflite", "digits_tflite_int8": "tflite"}


def test_gpu_check_runs_every_example_model_on_the_cpu(shared_repo: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                          "--repo", str(shared_repo), "--repeats", "3", "--batch-sizes", "1,8,64"],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in run.stdout.splitlines() if line.startswith("| digits_")}
    assert set(rows) == set(MODELS), run.stdout
    for model, platform in MODELS.items():
        _, shown_platform, device, staged, status, diff, *millis, _ = rows[model]
        assert (shown_platform, device, staged, status) == (platform, "cpu", "host", "ok"), rows[model]
        assert float(diff) == 0.0  # the device is the CPU: the same adapter twice
        assert len(millis) == 3 and all(float(m) > 0 for m in millis), rows[model]

