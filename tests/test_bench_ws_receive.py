"""``bench/ws_receive.py``, the measurement behind the README's figure for what taking already-read
websocket messages from aiohttp's queue would save: it runs on the installed aiohttp (its private
queue still where the measurement looks) and prints what the README says it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_it_times_both_ways_of_reading_a_waiting_message():
    run = subprocess.run(
        [sys.executable, "bench/ws_receive.py", "--rounds", "2", "--messages", "400", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    for way in ("receive", "queue"):
        assert 0 < result[way]["min_us"] <= result[way]["median_us"] <= result[way]["max_us"]
    assert result["saved_us"] == result["receive"]["median_us"] - result["queue"]["median_us"]


def test_bad_arguments_are_refused():
    run = subprocess.run(
        [sys.executable, "bench/ws_receive.py", "--rounds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--rounds must be at least 1" in run.stderr
