"""A pytest plugin: under ``make test`` and CI (TENSORGATE_NO_SKIPS=1) a skipped test is a failure, so a
machine without a tool or package never passes by doing less. The one skip allowed is MACHINE_SKIP."""

import os
from collections.abc import Generator

import pytest

from tests.helpers import MACHINE_SKIP


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("TENSORGATE_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if reason.removeprefix("Skipped: ") != MACHINE_SKIP:
            report.outcome = "failed"
            report.longrepr = f"{reason}: a skip is a failure under make test and CI (TENSORGATE_NO_SKIPS=1)"
