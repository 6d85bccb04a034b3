"""``bench/alarm.py``, the measurement behind ivr/calls/alarm.py's figures: it runs on both
event loops and prints every way it names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_it_times_every_way_of_waiting(loop: str) -> None:
    run = subprocess.run(
        [sys.executable, "bench/alarm.py", "--rounds", "2", "--waits", "200", "--loop", loop],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(f"event loop {loop}")
    for way in (
        "no deadline",
        "asyncio.timeout",
        "alarm, deadline later",
        "alarm, deadline earlier",
    ):
        assert way in run.stdout


def test_json_and_bad_arguments() -> None:
    run = subprocess.run(
        [sys.executable, "bench/alarm.py", "--rounds", "1", "--waits", "50", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    ways = json.loads(run.stdout)["ways"]
    assert len(ways) == 4
    for r in ways.values():
        assert 0 < r["min_ns"] <= r["median_ns"] <= r["max_ns"]
    bad = subprocess.run(
        [sys.executable, "bench/alarm.py", "--waits", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
