"""benchmarks/http_stack.py keeps working: the shared work answers a v2 reply, and a tiny run of
two options prints a complete table. Nothing here checks a timing."""

from __future__ import annotations

import orjson
import pytest

from benchmarks import http_stack, wrk
from benchmarks.http_stack import rest_json_body
from benchmarks.models import MODELS


def test_answer_decodes_the_body_and_replies_ten_values() -> None:
    body = rest_json_body(MODELS["identity"]).body
    reply = orjson.loads(http_stack.answer("identity", body))
    assert reply["model_name"] == "identity"
    assert reply["outputs"][0]["shape"] == [1, 10]
    assert reply["outputs"][0]["data"] == pytest.approx(orjson.loads(body)["inputs"][0]["data"][:10])


@pytest.mark.slow
@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed")
def test_a_tiny_run_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert http_stack.main(["--duration", "1", "--concurrency", "2", "--only", "uvicorn-asgi", "tensorgate"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| uvicorn-asgi") or
            line.startswith("| tensorgate")]
    assert len(rows) == 2
    for row in rows:
        assert int(row[2]) == 2  # clients
        assert int(row[7]) == 0  # errors
