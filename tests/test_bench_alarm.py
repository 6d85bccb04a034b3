"""``bench/alarm.py``, the measurement behind ivr/calls/alarm.py's figures: it runs on both
event loops and prints every way it names."""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import run_bench

WAYS = ("no deadline", "asyncio.timeout", "alarm, deadline later", "alarm, deadline earlier")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_it_times_every_way_of_waiting(loop: str) -> None:
    run = run_bench("alarm.py", "--rounds", "2", "--waits", "200", "--loop", loop)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(f"event loop {loop}")
    assert all(way in run.stdout for way in WAYS)


def test_json_and_bad_arguments() -> None:
    run = run_bench("alarm.py", "--rounds", "1", "--waits", "50", "--json")
    assert run.returncode == 0, run.stderr
    ways = json.loads(run.stdout)["ways"]
    assert tuple(ways) == WAYS
    for r in ways.values():
        assert 0 < r["min_ns"] <= r["median_ns"] <= r["max_ns"]
    bad = run_bench("alarm.py", "--waits", "0", timeout=60)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
