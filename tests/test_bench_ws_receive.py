"""``bench/ws_receive.py``, the measurement behind the README's figure for what taking already-read
websocket messages from aiohttp's queue would save: it runs on the installed aiohttp (its private
queue still where the measurement looks) and prints what the README says it prints."""

from __future__ import annotations

import json

from tests.bench_scripts import run_bench


def test_it_times_both_ways_of_reading_a_waiting_message():
    run = run_bench("ws_receive.py", "--rounds", "2", "--messages", "400", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    for way in ("receive", "queue"):
        assert 0 < result[way]["min_us"] <= result[way]["median_us"] <= result[way]["max_us"]
    assert result["saved_us"] == result["receive"]["median_us"] - result["queue"]["median_us"]


def test_bad_arguments_are_refused():
    run = run_bench("ws_receive.py", "--rounds", "0", timeout=60)
    assert run.returncode == 2 and "--rounds must be at least 1" in run.stderr
