"""``parameters.pad_batches_to`` on a real server: a batch runs at the next listed size, every request
still gets exactly its own rows, and a bad list fails the model's load with a message naming it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

PADDED = "max_batch_size: 8\nparameters: {pad_batches_to: \"1, 4, 8\"}\n"

BAD = {
    "padded_word": ("max_batch_size: 8\nparameters: {pad_batches_to: \"1,four\"}\n",
                    "parameters.pad_batches_to: '1,four' is not a comma-separated list of batch sizes"),
    "padded_over": ("max_batch_size: 8\nparameters: {pad_batches_to: \"4,16\"}\n",
                    "parameters.pad_batches_to: '4,16': each size must be between 1 and max_batch_size (8)"),
    "padded_unbatched": ("max_batch_size: 0\ninputs: [{name: x, datatype: FP32, shape: [-1, 2]}]\n"
                         "outputs: [{name: rows, datatype: FP32, shape: [-1, 2]}]\n"
                         "parameters: {pad_batches_to: \"4\"}\n",
                         "parameters.pad_batches_to: needs a model that batches (max_batch_size >= 1)"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("padding")
    model_factory.rows_seen_model(repo, "padded", PADDED)
    model_factory.rows_seen_model(repo, "plain", "max_batch_size: 8\n")
    for name, (config, _) in BAD.items():
        model_factory.rows_seen_model(repo, name, config)
    process = ServerProcess(repo)
    process.start()
    yield process
    assert process.stop() == 0


def _infer(server: ServerProcess, model: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    reply = httpx.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    output = reply.json()["outputs"][0]
    assert output["shape"] == list(x.shape)  # the padded rows never leave the worker
    return np.array(output["data"], np.float32).reshape(output["shape"])


@pytest.mark.parametrize(("rows", "executed"), [(1, 1), (2, 4), (3, 4), (4, 4), (5, 8), (8, 8)])
def test_a_batch_runs_at_the_next_listed_size_and_answers_only_its_own_rows(server: ServerProcess, rows: int,
                                                                            executed: int) -> None:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    np.testing.assert_array_equal(_infer(server, "padded", x), x + executed)
    np.testing.assert_array_equal(_infer(server, "plain", x), x + rows)


def test_requests_that_share_a_padded_batch_each_get_their_own_rows(server: ServerProcess) -> None:
    xs = [np.full((1 + i % 3, 2), 10.0 * i, np.float32) for i in range(12)]
    with ThreadPoolExecutor(len(xs)) as pool:
        replies = list(pool.map(lambda x: _infer(server, "padded", x), xs))
    for x, reply in zip(xs, replies, strict=True):
        executed = reply - x
        assert np.all(executed == executed.flat[0]) and executed.flat[0] in (1, 4, 8), (x, reply)


def test_a_bad_padding_list_fails_the_load_and_says_why(server: ServerProcess) -> None:
    index = httpx.post(f"{server.http_url}/v2/repository/index", json={}, timeout=30).json()
    states = {entry["name"]: entry for entry in index}
    assert states["padded"]["state"] == "READY"
    for name, (_, message) in BAD.items():
        assert states[name]["state"] == "UNAVAILABLE", states[name]
        assert message in states[name]["reason"], states[name]
