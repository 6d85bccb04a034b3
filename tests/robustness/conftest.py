"""The robustness suite: quick in the normal run, long with IVR_ROBUSTNESS_INPUTS=20000."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def robustness_inputs() -> int:
    """How many inputs each fuzzer feeds (300 by default; the long run sets 20,000)."""
    return int(os.environ.get("IVR_ROBUSTNESS_INPUTS", "300"))


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


_MEMORY: dict[str, int] = {}
_LINES: list[str] = []


@pytest.fixture
def robustness_report() -> list[str]:
    """Lines a test wants in the run's summary (its measurements)."""
    return _LINES


@pytest.fixture(scope="session", autouse=True)
def resident_memory():
    """The test process's resident memory (the services under test run in it) before the
    first robustness test and after the last; the summary reports both (README "Reliability")."""
    _MEMORY["before"] = _rss_kib()
    yield
    _MEMORY["after"] = _rss_kib()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _LINES:
        terminalreporter.write_line(f"robustness: {line}")
    before, after = _MEMORY.get("before"), _MEMORY.get("after")
    if before and after:
        terminalreporter.write_line(
            f"robustness: the test process's resident memory (hypothesis's bookkeeping "
            f"included) {before / 1024:.0f} MiB before the first test, {after / 1024:.0f} MiB "
            f"after the last ({after / before:.2f}x)"
        )
