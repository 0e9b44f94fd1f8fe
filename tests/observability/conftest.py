"""One server for the observability tests, over a batching model and a model that fails, exporting
Triton's metric names beside ours (``--metrics-compat triton``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests import model_factory
from tests.observability.observability import BATCHING_MODEL, FAILING_MODEL, MAX_BATCH_SIZE, Traffic
from tests.server import ServerProcess


@pytest.fixture(scope="package")
def observed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("observability") / "repo"
    repo.mkdir()
    model_factory.delay_model(repo, BATCHING_MODEL, config=(
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        "dynamic_batching: {max_queue_delay_ms: 5, max_queue_size: 256}\n"))
    model_factory.failing_model(repo)
    # Triton's names too (compat adds, never removes): every test here also checks that our own
    # families are all still there with them, and test_triton_metrics_live queries Triton's.
    server = ServerProcess(repo, extra_args=["--metrics-compat", "triton"])
    server.start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="package")
def exercised_metrics(observed_server: ServerProcess) -> str:
    """/metrics of the server after requests of every outcome the tests can cause cheaply
    (success, client error, server error) and a runtime worker restart."""
    traffic = Traffic(observed_server)
    traffic.successes(BATCHING_MODEL, clients=4, per_client=10)
    traffic.errors(BATCHING_MODEL, FAILING_MODEL)
    traffic.restart_worker([BATCHING_MODEL, FAILING_MODEL])
    traffic.successes(BATCHING_MODEL, clients=2, per_client=2)
    return httpx.get(observed_server.metrics_url).text
