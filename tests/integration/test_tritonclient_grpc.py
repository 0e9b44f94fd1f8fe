"""Conformance with Triton's gRPC client, ``tritonclient.grpc``, run in a separate process
(its protobuf registrations clash with ours): every check of tritonclient_grpc_checks.py
must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_client_script
from tests.server import ServerProcess

SCRIPT = Path(__file__).with_name("tritonclient_grpc_checks.py")
CHECK_NAMES = [
    "health", "server_and_model_metadata", "model_config", "raw_round_trip_every_datatype",
    "typed_contents_round_trip", "fp16_needs_raw_contents", "requested_output_subset", "version_routing",
    "errors_carry_status_codes", "streaming_infer",
]


@pytest.fixture(scope="module")
def outcome(server: ServerProcess) -> dict[str, str]:
    result: dict[str, str] = run_client_script(SCRIPT, server.grpc_address, timeout=120)
    assert sorted(result) == sorted(CHECK_NAMES), "the script's checks and this list must match"
    return result


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_tritonclient_grpc(outcome: dict[str, str], name: str) -> None:
    assert outcome[name] == "ok", outcome[name]
