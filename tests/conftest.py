"""Session-wide fixtures: one shared server over a repository of test models.

Framework workers take seconds to start, so tests that do not need a fresh server share
this one; tests that break things (kill workers, load broken models) start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import framework_models, model_factory
from tests.server import LOGS, SECRETS, ServerProcess

#: Under make test and CI a skip is a failure (tests/no_skips.py).
pytest_plugins = ["tests.no_skips"]

#: The shared server's body/message limit, small enough that a test can exceed it cheaply.
SHARED_MAX_REQUEST_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("shared") / "repo"
    repo.mkdir()
    model_factory.digits_model(repo)
    model_factory.copy_example_config(repo)
    model_factory.identity_model(repo)
    model_factory.flat_identity_model(repo)
    model_factory.versioned_model(repo)
    model_factory.failing_model(repo)
    return repo


@pytest.fixture(scope="session")
def aoti_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small AOTInductor package (compiling takes half a minute), copied by the tests that need one."""
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    framework_models.compile_doubling_aoti(path)
    return path


@pytest.fixture(scope="session")
def server(shared_repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(shared_repo, ["--max-request-bytes", str(SHARED_MAX_REQUEST_BYTES)])
    process.start()
    yield process
    code = process.stop()
    log = process.log()
    assert code == 0, f"server exited with {code}:\n{log}"
    assert "Traceback" not in log, log


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """After the session: no configured key in any line any test server (any of its processes) logged."""
    yield
    leaks = [f"{path}:{number}" for path in LOGS if path.exists()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if any(secret in line for secret in SECRETS)]
    assert not leaks, f"a configured key was logged at {leaks}"
