"""TF Serving's gRPC API, called with TF Serving's own client stubs (``tensorflow-serving-api``).

The stubs run in a process of their own (``tfserving_grpc_checks.py``): they and our generated
modules both register ``tensorflow.*`` messages in protobuf's default pool.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_client_script
from tests.server import ServerProcess

SCRIPT = Path(__file__).with_name("tfserving_grpc_checks.py")
CHECK_NAMES = [
    "predict_in_every_runtime", "typed_values_and_one_value_filling_a_shape", "every_datatype_round_trips",
    "output_filter", "versions", "metadata", "model_status", "errors_carry_status_codes",
]


@pytest.fixture(scope="module")
def outcome(server: ServerProcess) -> dict[str, str]:
    result: dict[str, str] = run_client_script(SCRIPT, server.grpc_address, "shared", timeout=180)
    assert sorted(result) == sorted(CHECK_NAMES), "the script's checks and this list must match"
    return result


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_tfserving_client(outcome: dict[str, str], name: str) -> None:
    assert outcome[name] == "ok", outcome[name]
