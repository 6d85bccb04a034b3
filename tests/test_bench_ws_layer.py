"""``bench/ws_layer.py``, the measurement behind the README's figure for what a reader handing
each websocket frame on directly would save against aiohttp's reader, queue and task wake-up: it
runs on the installed aiohttp (its private reader and queue still where the measurement looks),
its direct reader parses what a client sends, and it prints what the README says it prints."""

from __future__ import annotations

import json

from ivr.harness.wsclient import text_frame
from tests.bench_scripts import ROOT, load_script, run_bench


def test_it_times_each_way_of_reading_a_lone_message():
    run = run_bench("ws_layer.py", "--rounds", "2", "--messages", "500", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["rounds"] == 2 and result["messages"] == 500 and result["loop"] == "uvloop"
    for way in ("feeding", "aiohttp", "direct"):
        assert result[way]["min_us"] <= result[way]["median_us"] <= result[way]["max_us"]
    assert result["feeding"]["min_us"] > 0
    expected = round(result["aiohttp"]["median_us"] - result["direct"]["median_us"], 3)
    assert result["saved_us"] == expected


def test_the_direct_reader_takes_frames_however_the_bytes_are_cut():
    bench = load_script(ROOT / "bench" / "ws_layer.py")
    texts: list[str] = []
    reader = bench.DirectReader(texts.append)
    short, long = b'{"event":"mark"}', bench.MESSAGE
    stream = text_frame(short) + text_frame(long) * 2
    for cut in (1, 3, 7, len(stream)):
        texts.clear()
        for i in range(0, len(stream), cut):
            reader.feed_data(stream[i : i + cut])
        assert texts == [short.decode(), long.decode(), long.decode()], cut


def test_bad_arguments_are_refused():
    for flag in ("--rounds", "--messages"):
        run = run_bench("ws_layer.py", flag, "0", timeout=60)
        assert run.returncode == 2 and f"{flag} must be at least 1" in run.stderr
