"""The onnx image, really built (scripts/build_image.sh: buildah on a debootstrapped bookworm base) and
really run with buildah: the image's own entrypoint and user, the model repository mounted read-only.

Ports: buildah's chroot isolation shares the host's network, so the server listens on free loopback
ports given as TENSORGATE_* variables, the way a deployment sets them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.server import free_port
from benchmarks.system import children, cmdline
from tests.helpers import load_script
from tests.model_factory import copy_example_config

ROOT = Path(__file__).resolve().parent.parent.parent
# The first test pays for the build: debootstrap and the onnx image take minutes on a fresh machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("buildah") is None or shutil.which("debootstrap") is None:
        pytest.fail("buildah and debootstrap are missing: run scripts/test_tools.sh "
                    "(apt-get install -y buildah debootstrap)")
    result = subprocess.run(["scripts/build_image.sh", "onnx"], cwd=ROOT, capture_output=True, text=True,
                            timeout=1500, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    yield result.stdout.split()[-1]
    # Each run of the suite builds anew from the changed source: drop the untagged layers it left.
    subprocess.run(["buildah", "rmi", "--prune"], capture_output=True, timeout=300, check=False)


def test_a_failed_step_fails_an_oci_format_build_too(image: str, tmp_path: Path) -> None:
    # The OCI format ignores the SHELL line: a plain `;` chain carries on past a failure there, and
    # the Dockerfile's way (each RUN starts with `set -eu;`) stops at it.
    def build(run: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "Containerfile").write_text(f"FROM {image}\nRUN {run}\n")
        return subprocess.run(["buildah", "bud", "--format", "oci", "--isolation", "chroot",
                               "-f", str(tmp_path / "Containerfile"), str(tmp_path)],
                              capture_output=True, text=True, timeout=300, check=False)

    plain = build('false; echo carried" "on')
    assert plain.returncode == 0 and "carried on" in plain.stdout, plain.stdout + plain.stderr
    subprocess.run(["buildah", "rmi", plain.stdout.split()[-1]], capture_output=True, check=False)
    stopped = build('set -eu; false; echo carried" "on')
    assert stopped.returncode != 0, stopped.stdout
    assert "carried on" not in stopped.stdout


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """digits_onnx with the example config, and the trained model to check its answers against."""
    build = load_script("build_model_repo")
    repo = tmp_path_factory.mktemp("image-repo")
    model = build.train_digits_mlp()
    (repo / "digits_onnx" / "1").mkdir(parents=True)
    build.export_onnx(model, repo / "digits_onnx" / "1" / "model.onnx")
    copy_example_config(repo)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user 10001
    return repo, model


def _descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found += _descendants(child)
    return found


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


class RunningImage:
    """``buildah run`` of the image's entrypoint in a working container made from it."""

    def __init__(self, image: str, repo: Path, log: Path) -> None:
        self.ports = {name: free_port() for name in ("HTTP", "GRPC", "METRICS")}
        self.container = _buildah("from", "--quiet", image)
        config = json.loads(_buildah("inspect", "--type", "container", self.container))["OCIv1"]["config"]
        self.user = config["User"]
        self.entrypoint = [*config["Entrypoint"], *(config.get("Cmd") or [])]
        env = [arg for name, port in self.ports.items() for arg in ("--env", f"TENSORGATE_{name}_PORT={port}")]
        # Without a PID namespace tini is not PID 1 here: it reaps as a subreaper instead.
        env += ["--env", "TINI_SUBREAPER=1"]
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["buildah", "run", "--isolation", "chroot", "--volume", f"{repo}:/models:ro", *env,
                 self.container, "--", *self.entrypoint],
                stdout=out, stderr=subprocess.STDOUT)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['HTTP']}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.http}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready after {timeout} s:\n{self.log.read_text()}")

    def processes(self) -> dict[int, str]:
        """The container's processes (pid: command line), buildah's own helpers left out."""
        return {pid: cmdline(pid) for pid in _descendants(self.process.pid)
                if not cmdline(pid).startswith("buildah-chroot")}

    def process_starting(self, command: str) -> int:
        """The pid of the container's process whose command line starts with ``command``."""
        found = [pid for pid, line in self.processes().items() if line.startswith(command)]
        assert found, f"no {command!r} among {self.processes()}"
        return found[0]

    def written_paths(self) -> list[str]:
        """Every file the container wrote so far (its overlay layer's upper directory)."""
        inspected = json.loads(_buildah("inspect", "--type", "container", self.container))
        root = json.loads(_buildah("info"))["store"]["GraphRoot"]
        containers = json.loads((Path(root) / "overlay-containers" / "containers.json").read_text())
        layer = next(c["layer"] for c in containers if c["id"] == inspected["ContainerID"])
        upper = Path(root) / "overlay" / layer / "diff"
        assert upper.is_dir(), upper
        return sorted(f"/{p.relative_to(upper)}" for p in upper.rglob("*") if not p.is_dir())

    def close(self) -> None:
        if self.process.poll() is None:
            # Killing `buildah run` alone would leave the container's processes running: kill them too.
            inside = _descendants(self.process.pid)
            self.process.kill()
            for pid in inside:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        subprocess.run(["buildah", "rm", self.container], capture_output=True, check=False)


@pytest.fixture(scope="module")
def running(image: str, digits_repo: tuple[Path, object],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningImage]:
    repo, _ = digits_repo
    server = RunningImage(image, repo, tmp_path_factory.mktemp("image-log") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def test_the_image_runs_as_its_non_root_user_from_its_own_entrypoint(running: RunningImage) -> None:
    assert running.user == "10001:10001"
    assert running.entrypoint[:2] == ["tini", "--"]
    running.process_starting("/usr/bin/tini -- tensorgate serve")
    running.process_starting("/opt/tensorgate/bin/python3.11 /opt/tensorgate/bin/tensorgate serve")
    running.process_starting("/opt/tensorgate/bin/python3.11 -m runtimes.worker onnxruntime")
    processes = running.processes()
    assert len(processes) >= 4  # tini, the supervisor, a frontend, the onnx worker
    assert {pid: _uid(pid) for pid in processes} == dict.fromkeys(processes, 10001), processes


def test_the_image_answers_an_inference_like_the_model_offline(
        running: RunningImage, digits_repo: tuple[Path, object]) -> None:
    build = load_script("build_model_repo")
    x, _ = build.digits_test_split()
    rows = np.asarray(x[:4], dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}
    reply = httpx.post(f"{running.http}/v2/models/digits_onnx/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    logits = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32).reshape(4, 10)
    np.testing.assert_allclose(logits, build.numpy_forward(digits_repo[1], rows), rtol=1e-4, atol=1e-4)


def test_the_model_repository_is_mounted_read_only(running: RunningImage,
                                                   digits_repo: tuple[Path, object]) -> None:
    # As root, so that only the read-only mount stands in the way (the files are 0644, the folders 0755).
    probe = subprocess.run(["buildah", "run", "--isolation", "chroot", "--user", "0:0", "--volume",
                            f"{digits_repo[0]}:/models:ro", running.container, "--",
                            "sh", "-c", "touch /models/x 2>&1 && echo wrote"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert "Read-only file system" in probe.stdout, probe.stdout + probe.stderr
    assert not (digits_repo[0] / "x").exists()


def test_the_image_serves_metrics(running: RunningImage) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    assert httpx.post(f"{running.http}/v2/models/digits_onnx/infer", json=body, timeout=10).status_code == 200
    scrape = httpx.get(f"http://127.0.0.1:{running.ports['METRICS']}/metrics", timeout=10)
    assert scrape.status_code == 200
    successes = [sample.value for family in text_string_to_metric_families(scrape.text)
                 for sample in family.samples
                 if sample.name == "tensorgate_requests_total"
                 and sample.labels.get("model") == "digits_onnx" and sample.labels.get("outcome") == "success"]
    assert successes and sum(successes) >= 1, scrape.text


def test_sigterm_to_the_image_drains_and_exits_0(running: RunningImage) -> None:
    # A container runtime signals PID 1, which is tini here.
    os.kill(running.process_starting("/usr/bin/tini"), signal.SIGTERM)
    assert running.process.wait(timeout=60) == 0, running.log.read_text()
    log = running.log.read_text()
    for event in ("signal_received", "draining", "drained", "stopped"):
        assert event in log, log
    # A read-only root filesystem with a tmpfs at /tmp is enough: the run wrote nowhere else.
    written = [path for path in running.written_paths() if not path.startswith("/tmp/")]
    assert written == [], written


def _build_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scripts/build_image.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **env})


def test_a_runtimes_value_that_is_not_an_extra_is_refused_with_the_choices() -> None:
    result = _build_script({}, "onnx,pytorch")
    assert result.returncode == 1
    assert "RUNTIMES: 'pytorch' is not a runtime extra; pick one or more of: all jax onnx tensorflow tflite torch" \
        in result.stderr, result.stderr


def test_a_missing_base_image_is_refused_with_what_to_do() -> None:
    result = _build_script({"BASE_IMAGE": "localhost/tensorgate-no-such-base:1"}, "onnx")
    assert result.returncode == 1
    assert "base image 'localhost/tensorgate-no-such-base:1' is neither local nor pullable; " \
        "unset BASE_IMAGE to make one with debootstrap" in result.stderr, result.stderr
