"""Several frontend processes on one pair of ports, on a server of its own: one queue per model
whatever the frontend, metrics and statistics that add up across processes, a frontend killed
with -9 replaced, and shared memory that never shows up in /dev/shm.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.system import children, cmdline
from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

FRONTENDS = 3
SHM = Path("/dev/shm")


def _frontend_pids(server: ServerProcess) -> list[int]:
    assert server.process is not None
    return sorted(p for p in children(server.process.pid) if "gateway.frontend" in cmdline(p))


def _arena_fds(pid: int) -> int:
    """The memfd arenas a process holds open (two per data connection; an arena's mmap holds a
    second fd of the same memfd, so they are counted by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if "tensorgate-arena" in os.readlink(fd):
                inodes.add(fd.stat().st_ino)
        except OSError:  # closed while we looked
            continue
    return len(inodes)


def _shm_entries() -> set[str]:
    return {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def shm_before() -> set[str]:
    return _shm_entries()


@pytest.fixture(scope="module")
def frontends_server(tmp_path_factory: pytest.TempPathFactory, shm_before: set[str]) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("frontends") / "repo"
    repo.mkdir()
    model_factory.delay_model(repo, config="max_batch_size: 16\ndynamic_batching: {max_queue_delay_ms: 20}\n")
    model_factory.flat_identity_model(repo)
    server = ServerProcess(repo, ["--frontends", str(FRONTENDS)])
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def _infer(client: httpx.Client, url: str, value: float) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
    reply = client.post(f"{url}/v2/models/delay/infer", json=body)
    assert reply.status_code == 200, reply.text
    return np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)


def _stats(url: str) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"{url}/v2/models/delay/stats").json()["model_stats"][0]
    return stats


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_the_frontends_share_the_ports_and_one_queue_per_model(frontends_server: ServerProcess) -> None:
    """24 clients on their own connections are spread over the frontends (SO_REUSEPORT hashes each
    connection to one), yet the one model's batches are formed from all of them: full batches of 16,
    more than one frontend's share of the clients (16 of 24 on one of 3 frontends: odds ~1 in 1,000)."""
    url = frontends_server.http_url
    assert len(_frontend_pids(frontends_server)) == FRONTENDS
    before = _stats(url)
    clients = 24

    def client(index: int) -> None:
        with httpx.Client() as session:  # one connection per client: the kernel picks its frontend
            for turn in range(10):
                value = index * 100 + turn
                assert _infer(session, url, value).tolist() == [2.0 * value] * 4

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    after = _stats(url)
    assert after["inference_count"] - before["inference_count"] == clients * 10  # type: ignore[operator]
    sizes = {b["batch_size"] for b in after["batch_stats"]}  # type: ignore[attr-defined]
    assert 16 in sizes, sizes


def test_metrics_and_statistics_add_up_across_frontends(frontends_server: ServerProcess) -> None:
    url = frontends_server.http_url
    metrics_before = httpx.get(frontends_server.metrics_url).text
    stats_before = _stats(url)
    requests = 30
    for _ in range(requests):
        with httpx.Client() as session:  # a new connection each time: any frontend may answer
            _infer(session, url, 1.0)
    metrics = httpx.get(frontends_server.metrics_url).text
    counted = (_metric(metrics, "tensorgate_requests_total", model="delay", outcome="success")
               - _metric(metrics_before, "tensorgate_requests_total", model="delay", outcome="success"))
    assert counted == requests
    stats = _stats(url)
    success = stats["inference_stats"]["success"]["count"]  # type: ignore[index]
    assert success - stats_before["inference_stats"]["success"]["count"] == requests  # type: ignore[index]
    for index in range(FRONTENDS):
        assert f'process="frontend-{index}"' in metrics
    # Every frontend answers statistics from the model's one scheduler: the same numbers.
    for _ in range(FRONTENDS * 2):
        with httpx.Client() as session:
            again = session.get(f"{url}/v2/models/delay/stats").json()["model_stats"][0]
        assert again["inference_count"] == stats["inference_count"]


def test_a_killed_frontend_is_replaced_and_the_others_serve_on(frontends_server: ServerProcess,
                                                               shm_before: set[str]) -> None:
    url = frontends_server.http_url
    victim = _frontend_pids(frontends_server)[0]
    worker_pids = frontends_server.worker_pids()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = _frontend_pids(frontends_server)
        if len(pids) == FRONTENDS and victim not in pids:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"frontend {victim} was not replaced:\n{frontends_server.log()}")
    assert "event=frontend_exited" in frontends_server.log()
    assert frontends_server.worker_pids() == worker_pids  # the model's worker never noticed
    for _ in range(20):
        with httpx.Client() as session:
            assert _infer(session, url, 3.0).tolist() == [6.0] * 4
    # The worker let go of the dead frontend's arenas: two per live frontend that has sent it work.
    [worker] = worker_pids
    assert _arena_fds(worker) <= 2 * FRONTENDS
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert _shm_entries() <= shm_before  # the arenas are memfds: nothing named, nothing to leak


def test_nothing_is_left_in_dev_shm_after_the_server_exits(tmp_path: Path, shm_before: set[str]) -> None:
    repo = tmp_path / "repo"
    model_factory.flat_identity_model(repo)
    server = ServerProcess(repo, ["--frontends", "2"])
    server.start()
    try:
        for _ in range(10):
            with httpx.Client() as session:
                reply = session.post(f"{server.http_url}/v2/models/flat_identity/infer", json={
                    "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
                assert reply.status_code == 200
        [frontend] = _frontend_pids(server)[:1]
        before = _arena_fds(frontend)
        os.kill(server.worker_pids()[0], signal.SIGKILL)  # a worker dies holding arenas
        server.wait_until_ready("flat_identity")
        for _ in range(10):
            with httpx.Client() as session:
                session.post(f"{server.http_url}/v2/models/flat_identity/infer", json={
                    "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
        assert _arena_fds(frontend) <= before  # the dead worker's arenas were closed, the new ones replace them
    finally:
        assert server.stop() == 0, server.log()
    assert _shm_entries() <= shm_before
