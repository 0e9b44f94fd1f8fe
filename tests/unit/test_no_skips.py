"""The no-skips plugin: a skip fails under make test and CI, and only there."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import MACHINE_SKIP, ROOT

PROBE = f"""
import pytest

def test_needs_a_tool():
    pytest.skip("prometheus is not installed")

@pytest.mark.skipif(True, reason={MACHINE_SKIP!r})
def test_only_without_a_gpu():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    raise AssertionError
"""


def _run(tmp_path: Path, no_skips: str | None) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_NO_SKIPS"} | {"PYTHONPATH": str(ROOT)}
    if no_skips is not None:
        env["TENSORGATE_NO_SKIPS"] = no_skips
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.no_skips", "-q", "-rA", "-p",
                           "no:cacheprovider", str(probe)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_skip_fails_when_skips_are_failures(tmp_path: Path) -> None:
    done = _run(tmp_path, "1")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped, 1 xfailed" in done.stdout, done.stdout
    assert "prometheus is not installed: a skip is a failure under make test and CI" in done.stdout


def test_a_skip_is_a_skip_otherwise(tmp_path: Path) -> None:
    done = _run(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "2 skipped, 1 xfailed" in done.stdout, done.stdout
