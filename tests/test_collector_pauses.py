"""The garbage collector's pauses: timed per collection, shown by /healthz and /metrics, read
by ``make bench-calls`` per run; and the collector's thresholds the same in the service and the
bench's references (the ratio compares work, not settings)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ivr import collector_pauses
from ivr.collector_pauses import PAUSE_BUCKETS, CollectorPauses
from ivr.service import GC_THRESHOLDS
from tests.bench_scripts import load_script
from tests.test_metrics import scrape, value

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched() -> Iterator[None]:
    """The process's pauses watched for the test, as ``ivr serve`` watches them."""
    collector_pauses.watch()
    try:
        yield
    finally:
        collector_pauses.unwatch()


def test_each_collection_is_timed_from_its_start_to_its_stop() -> None:
    clock = Clock()
    pauses = CollectorPauses(clock=clock)
    for generation, seconds in ((0, 0.003), (0, 0.030), (2, 0.120)):
        pauses.callback("start", {"generation": generation})
        clock.now += seconds
        pauses.callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    assert pauses.collections == [2, 0, 1]
    assert pauses.paused_seconds == pytest.approx(0.153)
    assert pauses.longest_seconds == pytest.approx(0.120)
    report = pauses.report()
    assert report["longest_pause_ms"] == pytest.approx(120)
    # Over 1 ms: all three; over 5 and 10: two; over 25: two; over 50 and 100: one; 250: none.
    assert report["pauses_over_ms"] == {
        "1": 3,
        "5": 2,
        "10": 2,
        "25": 2,
        "50": 1,
        "100": 1,
        "250": 0,
    }
    assert pauses.at_most == [0, 1, 1, 1, 2, 2, 3]


def test_a_stop_without_its_start_is_not_a_pause() -> None:
    """Watched from inside a collection: its start was never seen, so it is not measured."""
    pauses = CollectorPauses(clock=Clock())
    pauses.callback("stop", {"generation": 0})
    assert pauses.count == 0 and pauses.paused_seconds == 0


def test_watching_times_real_collections_once_however_often_asked(watched: None) -> None:
    collector_pauses.watch()  # a second time: still one callback
    assert gc.callbacks.count(collector_pauses.PAUSES.callback) == 1
    before = collector_pauses.PAUSES.collections[2]
    gc.collect()
    # At least the one asked for (the collector may start one of its own meanwhile).
    timed = collector_pauses.PAUSES.collections[2]
    assert timed >= before + 1
    assert collector_pauses.PAUSES.longest_seconds > 0
    collector_pauses.unwatch()
    assert collector_pauses.PAUSES.callback not in gc.callbacks
    assert collector_pauses.PAUSES.report()["watched"] is False
    gc.collect()
    assert collector_pauses.PAUSES.collections[2] == timed  # no longer timed


async def test_healthz_and_metrics_show_the_pauses(service, watched: None) -> None:
    _, url = service
    gc.collect()
    async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as resp:
        shown = (await resp.json())["collector"]
    pauses = collector_pauses.PAUSES
    assert sum(shown["collections"]) >= 1 and shown["collections"][2] >= 1
    assert shown["longest_pause_ms"] > 0
    assert shown["thresholds"] == list(gc.get_threshold()) and shown["watched"] is True
    assert set(shown["pauses_over_ms"]) == {f"{b * 1000:g}" for b in PAUSE_BUCKETS}
    m = await scrape(url)
    count = value(m, "ivr_gc_pause_seconds", "ivr_gc_pause_seconds_count")
    assert count >= sum(shown["collections"])  # the scrape may have seen one more
    assert value(m, "ivr_gc_pause_seconds", "ivr_gc_pause_seconds_bucket", le="+Inf") == count
    assert value(m, "ivr_gc_pause_seconds", "ivr_gc_pause_seconds_sum") > 0
    assert count <= pauses.count


def test_bench_reads_a_runs_pauses_from_healthz_before_and_after() -> None:
    bench = load_script(ROOT / "bench" / "calls.py")
    before = {
        "watched": True,
        "collections": [3, 0, 0],
        "paused_seconds": 0.010,
        "pauses_over_ms": {"1": 2, "5": 1, "10": 0, "25": 0, "50": 0, "100": 0, "250": 0},
    }
    after = {
        "watched": True,
        "collections": [9, 1, 0],
        "paused_seconds": 0.070,
        "pauses_over_ms": {"1": 8, "5": 6, "10": 2, "25": 0, "50": 0, "100": 0, "250": 0},
    }
    run = bench.collector_pauses(before, after)
    assert run == {"collections": 7, "paused_ms": 60.0, "longest_at_most_ms": 25.0}
    assert "each at most 25 ms" in bench.collector_line(run)
    long = {**after, "pauses_over_ms": {k: 9 for k in after["pauses_over_ms"]}}
    assert bench.collector_pauses(before, long)["longest_at_most_ms"] is None
    assert "over 250 ms" in bench.collector_line(bench.collector_pauses(before, long))
    assert bench.collector_pauses(before, before) == {
        "collections": 0,
        "paused_ms": 0.0,
        "longest_at_most_ms": 0.0,
    }
    assert bench.collector_pauses({}, after) is None  # a service that does not say
    assert bench.collector_pauses({**before, "watched": False}, after) is None  # not timed
    assert bench.collector_pauses(None, None) is None


@pytest.mark.parametrize("script", ["bare_ws_server.py", "bare_rtp_server.py"])
def test_the_references_collect_as_the_service_does(script: str) -> None:
    reference = load_script(ROOT / "bench" / "reference" / script)
    assert reference.GC_THRESHOLDS == GC_THRESHOLDS
