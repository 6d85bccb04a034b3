"""``bench/calls.py`` (``make bench-calls``): the service and the bare reference servers of
``bench/reference/`` under the same load from ``ivr loadtest``'s generator, and those servers
themselves. The streams run in real time, so the numbers are kept small."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ivr.config import load_config
from ivr.harness.loadtest.twilio import POOL
from ivr.harness.twilio_wire import media_template
from ivr.harness.wsclient import OP_CLOSE, OP_PONG, RawWebSocket, WebSocketError, text_frame
from ivr.service import create_app
from tests.bench_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "calls.py"
DEMO = ROOT / "examples" / "asterisk-demo.toml"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_range(size: int) -> tuple[int, int]:
    low = random.randrange(43000, 47000 - size)
    return low, low + size - 1


async def _bench(*args: str, timeout: float = 120) -> tuple[int, str]:
    """``bench/calls.py ARGS`` as make bench-calls runs it: its exit status and stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--progress-interval",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, out.decode()


def _check_runs(result: dict[str, Any], calls: int, frames_per_call: int) -> None:
    """Every run's reference side complete, its ratio and the summary sane."""
    for run in result["runs"]:
        assert run["calls_completed"] == calls and run["frames_lost"] == 0, run["errors"]
        ref = run["reference"]
        assert ref is not None, run["reference_error"]
        assert ref["streams_completed"] == calls and ref["streams_failed"] == 0
        assert ref["frames_received"] == ref["frames_sent"] == calls * frames_per_call
        assert ref["cost"]["window"] and ref["ticker"]["ticks"] > 0
        assert run["server_cpu_per_call_minute"] > 0 and run["bare_cpu_per_call_minute"] > 0
        ratio = run["server_cpu_per_call_minute"] / run["bare_cpu_per_call_minute"]
        assert run["cpu_ratio"] == pytest.approx(ratio, abs=0.001) and 0 < ratio < 50
        whole, bare_whole = (
            run["whole_call_cpu_per_call_minute"],
            run["bare_whole_cpu_per_call_minute"],
        )
        assert whole > 0 and bare_whole > 0 and ref["whole_call_cost"]["call_minutes"] > 0
        assert run["whole_call_ratio"] == pytest.approx(whole / bare_whole, abs=0.001)
        assert run["calls_per_core"] == int(60 / run["server_cpu_per_call_minute"])
        assert run["bare_rss_kib_per_call"] is not None  # the bench started it
        assert run["ok"] is True
    ratios = result["summary"]["cpu_ratio"]
    assert ratios["min"] <= ratios["median"] <= ratios["max"]
    assert result["ok"] is True
    json.dumps(result)


@pytest.fixture
async def twilio_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("IVR_MASTER_KEY", "11" * 32)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    server = TestServer(create_app(load_config(None), tmp_path / "var", fsync=False))
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def _failures(result: dict[str, Any]) -> str:
    """What made a bench run fail, for the assertion message."""
    keys = ("calls_completed", "frames_lost", "errors", "reference_error", "service")
    runs = [{k: r.get(k) for k in keys} for r in result["runs"]]
    refs = [(r["reference"] or {}).get("streams_failed") for r in result["runs"]]
    return json.dumps({"runs": runs, "reference_streams_failed": refs}, default=str)[:4000]


async def test_twilio_against_the_service_and_the_bare_ws_server(twilio_service: str) -> None:
    code, out = await _bench(
        *("--url", twilio_service, "--calls", "4", "--duration", "1.5", "--ramp", "0.2"),
        *("--repeats", "2", "--json"),
    )
    result = json.loads(out)
    assert code == 0 and result["repeats"] == 2 and len(result["runs"]) == 2
    _check_runs(result, 4, 2 * 75)  # both tracks, 50 frames/s, 1.5 s
    run = result["runs"][0]
    assert run["reference"]["stop_to_close_ms"]["count"] == 4
    assert run["service_rss_kib_per_call"] is None  # not ours to read: --url
    for side in ("service", "bare"):
        assert isinstance(run[f"{side}_fixed_cpu_ms_per_call"], float)
        assert result["summary"][f"{side}_fixed_cpu_ms_per_call"] is not None
    assert run["service"]["frames_stored"] == run["service"]["frames_expected"] > 0
    # One after the other, each side's window has this host's TCP to itself (tcp_segments).
    assert run["service_tcp_acks_per_data_segment"] >= 0
    assert run["bare_tcp_acks_per_data_segment"] >= 0
    assert result["summary"]["bare_tcp_acks_per_data_segment"] is not None
    for key in ("webhook_p99_ms", "first_prompt_p99_ms", "stop_to_close_p99_ms"):
        assert run[key] is not None and result["summary"][key]["max"] >= run[key] >= 0


async def test_asterisk_against_the_service_and_the_bare_rtp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", "11" * 32)
    monkeypatch.setenv("ARI_PASSWORD", "demo")
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_START", 0.01)
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_MAX", 0.05)
    ari = f"127.0.0.1:{_free_port()}"
    low, high = _port_range(64)
    text = DEMO.read_text().replace("127.0.0.1:8088", ari).replace("40000-40999", f"{low}-{high}")
    (tmp_path / "asterisk.toml").write_text(text)
    server = TestServer(create_app(load_config(tmp_path / "asterisk.toml"), tmp_path / "var"))
    await server.start_server()
    bare_low, bare_high = _port_range(32)
    try:
        args = ["--platform", "asterisk", "--url", f"http://127.0.0.1:{server.port}"]
        args += ["--ari-listen", ari, "--bare-ports", f"{bare_low}-{bare_high}"]
        args += ["--calls", "4", "--duration", "1.5", "--ramp", "0.2", "--repeats", "1"]
        code, out = await _bench(*args, "--json")
        result = json.loads(out)
        assert code == 0, _failures(result)
        _check_runs(result, 4, 75)
        assert result["runs"][0]["reference"]["ports"] == f"{bare_low}-{bare_high}"
        assert result["runs"][0]["ari_setup_p99_ms"] is not None
        assert result["runs"][0]["windows_overlap"] == 0  # the reference came after
        assert result["runs"][0]["service_tcp_acks_per_data_segment"] is None  # RTP: UDP
        # The text report, with the reference loaded at the same time as the service.
        code, out = await _bench(*args[:-2], "--repeats", "2", "--side-by-side")
        assert code == 0, out
        assert "reference loaded" in out and "at the same time" in out
        overlaps = re.findall(r"windows overlap +(\d+)%", out)
        assert len(overlaps) == 2 and all(int(o) > 0 for o in overlaps), out
        assert out.count("cpu ratio") == 3 and "(service / bare, steady)" in out
        assert (
            out.count("whole-call ratio") == 2 and out.count("calls per core") == 4
        )  # and the summary of both sides
        assert "min / median / max over 2 runs" in out and out.rstrip().endswith("OK")
        assert "tcp on this host" not in out
    finally:
        await server.close()


async def test_it_starts_ivr_serve_without_url() -> None:
    code, out = await _bench("--calls", "2", "--duration", "1", "--repeats", "1", "--json")
    result = json.loads(out)
    assert code == 0, result["runs"][0]["errors"]
    assert result["url"].startswith("http://127.0.0.1:")
    _check_runs(result, 2, 2 * 50)
    assert result["runs"][0]["service_rss_kib_per_call"] is not None
    # ivr serve times its collections; a run this short may see none, but says so.
    pauses = result["runs"][0]["service_collector"]
    assert pauses is not None and pauses["collections"] >= 0 and pauses["paused_ms"] >= 0


async def test_no_reference_without_a_service() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    code, out = await _bench("--url", url, "--calls", "2", "--duration", "0.2", "--repeats", "1")
    assert code == 1
    assert "bare cpu" in out and "failed: skipped: no call completed" in out
    assert out.rstrip().endswith("FAILED")


def test_options_and_defaults() -> None:
    bench = load_script(BENCH)
    args = bench.parser().parse_args(["--platform", "asterisk"])
    assert args.url is None and args.repeats == 3 and args.bare_ports is None
    options = bench.options_from_args(args)
    assert bench.bare_ports(options, None) == f"41000-{41000 + 50 + 16 - 1}"
    assert bench.bare_ports(options, "42000-42099") == "42000-42099"
    assert bench.main(["--calls", "0"]) == 2  # refused before ivr serve is started
    assert bench.main(["--repeats", "0"]) == 2
    assert bench.main(["--workers", "0"]) == 2
    assert bench.main(["--workers", "2", "--platform", "asterisk"]) == 2  # Twilio's only
    assert bench.main(["--workers", "2", "--url", "http://127.0.0.1:9"]) == 2  # started here
    assert args.loop == "auto" and args.workers == 1


@pytest.fixture
async def bare_port() -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "reference" / "bare_ws_server.py"),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "ready", line
        yield int(line[1])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_rawws_against_the_bare_server(bare_port: int) -> None:
    ws = await RawWebSocket.connect(f"ws://127.0.0.1:{bare_port}/ws", timeout=10)
    sid = "MZ" + "0" * 32
    ws.send_text(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
    ws.send_text(json.dumps({"event": "start", "streamSid": sid, "start": {}}))
    inbound, outbound = media_template(sid, "inbound"), media_template(sid, "outbound")
    n = 120  # 2.4 s of audio: the bare server seals twice on the way
    frames = []
    for i in range(n):
        frames.append(text_frame(inbound % (2 + 2 * i, i + 1, 20 * i, POOL[0])))
        frames.append(text_frame(outbound % (3 + 2 * i, i + 1, 20 * i, POOL[1])))
    ws.write_raw(b"".join(frames))  # every frame in one write
    ws.ping(b"after the frames")  # answered once the server has read them all
    assert await asyncio.wait_for(ws.receive(), 10) == (OP_PONG, b"after the frames")
    ws.send_text(json.dumps({"event": "stop", "sequenceNumber": str(2 + 2 * n)}))
    op, body = await asyncio.wait_for(ws.receive(), 10)
    assert op == OP_CLOSE and ws.close_code == 1000 and body[:2] == b"\x03\xe8"
    assert ws.closed
    assert await ws.receive() == (OP_CLOSE, b"")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{bare_port}/stats") as resp,
    ):
        stats = await resp.json()
    assert stats["frames"] == 2 * n and stats["connections"] == 1 and stats["open"] == 0
    # A seal per second of two-track audio (16,000 bytes), then the last one at the stop.
    assert stats["chunks"] == 3 and stats["sealed_bytes"] == 2 * n * 160 + 3 * 16
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{bare_port}/cpu") as resp,
    ):
        assert (await resp.json())["cpu_seconds"] > 0


async def test_rawws_handshake_refused_and_server_messages(
    bare_port: int, twilio_service: str
) -> None:
    with pytest.raises(WebSocketError, match="upgrade refused") as refused:
        await RawWebSocket.connect(f"ws://127.0.0.1:{bare_port}/stats", timeout=10)
    assert refused.value.status == 200  # a plain HTTP answer is no upgrade
    with pytest.raises(WebSocketError, match="ws://"):
        await RawWebSocket.connect(f"http://127.0.0.1:{bare_port}/ws")
    # The service's consent stream refuses a start without a valid token with close 1008.
    ws = await RawWebSocket.connect(twilio_service.replace("http", "ws") + "/twilio/stream/consent")
    ws.send_text(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": "MZ" + "1" * 32,
                "start": {
                    "callSid": "CA" + "2" * 32,
                    "accountSid": "AC" + "3" * 32,
                    "customParameters": {"token": "forged"},
                },
            }
        )
    )
    op, _ = await asyncio.wait_for(ws.receive(), 10)
    assert op == OP_CLOSE and ws.close_code == 1008


async def test_bare_rtp_server_checks_peer_and_ssrc_and_seals() -> None:
    low, high = _port_range(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "reference" / "bare_rtp_server.py"),
        "--ports",
        f"{low}-{high}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
    )

    def packet(n: int, ssrc: int = 7, first: int = 0x80) -> bytes:
        header = bytes([first, 0]) + n.to_bytes(2, "big") + (n * 160).to_bytes(4, "big")
        return header + ssrc.to_bytes(4, "big") + bytes(160)

    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "ready" and int(line[2]) >= 1, line
        http = f"http://127.0.0.1:{line[1]}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{http}/ports") as resp:
                port = (await resp.json())["ports"][0]
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
            ):
                for n in range(120):  # 2.4 s of audio: two chunks sealed on the way
                    s.sendto(packet(n), ("127.0.0.1", port))
                    if n % 20 == 0:
                        await asyncio.sleep(0.005)
                s.sendto(packet(120, ssrc=8), ("127.0.0.1", port))  # another SSRC
                s.sendto(packet(121, first=0x40), ("127.0.0.1", port))  # not version 2
                s.sendto(b"\x80\x00", ("127.0.0.1", port))  # too short
                stranger.sendto(packet(122), ("127.0.0.1", port))  # another peer
                for _ in range(50):
                    async with session.get(f"{http}/stats") as resp:
                        stats = await resp.json()
                    if stats["frames"] + stats["refused"] >= 124:
                        break
                    await asyncio.sleep(0.02)
            assert stats["frames"] == 120 and stats["refused"] == 4 and stats["streams"] == 1
            assert stats["chunks"] == 2 and stats["payload_bytes_sealed"] == 100 * 160
            async with session.get(f"{http}/cpu") as resp:
                assert (await resp.json())["cpu_seconds"] > 0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def test_parse_ports() -> None:
    parse_ports = load_script(ROOT / "bench" / "reference" / "bare_rtp_server.py").parse_ports
    assert parse_ports("41000-41009") == (41000, 41009)
    assert parse_ports("5000") == (5000, 5000)
    for bad in ("x", "10-5", "0-10", "70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


async def test_bench_workers_compares_one_and_two_workers_in_one_run() -> None:
    """``bench/workers.py`` (make bench-workers): ivr serve --workers 1, then --workers 2 with
    twice the calls, each counted by the CPU of all its processes; every frame arrives."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "workers.py"),
        *("--progress-interval", "0", "--calls", "3", "--duration", "1", "--repeats", "1"),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)
    (row,) = result["runs"]
    assert [(r["workers"], r["calls"], r["calls_completed"]) for r in row] == [(1, 3, 3), (2, 6, 6)]
    assert all(r["frames_lost"] == 0 and r["server_cpu_per_call_minute"] > 0 for r in row)
    assert row[0]["cpu_ratio_vs_first"] == 1.0 and row[1]["cpu_ratio_vs_first"] > 0
    assert result["summary"]["cpu_ratio_vs_first@2"]["median"] == row[1]["cpu_ratio_vs_first"]


def test_bench_workers_refuses_bad_counts() -> None:
    workers = load_script(ROOT / "bench" / "workers.py")
    assert workers.parse_counts("1,2,4") == [1, 2, 4]
    for bad in ("", "0", "1,x", "65"):
        with pytest.raises(ValueError, match="--workers"):
            workers.parse_counts(bad)


def test_side_by_side_drops_the_host_wide_tcp_counts() -> None:
    """Both loads at once share this host's TCP counters (tcp_segments): neither side's."""
    drop = load_script(ROOT / "bench" / "calls.py")._drop_tcp
    cost = {"window": "steady", "tcp_data_segments": 5, "tcp_acks_per_data_segment": 0.5}
    drop(cost)
    assert cost == {"window": "steady"}


def test_each_run_says_its_memory_per_call() -> None:
    bench = load_script(BENCH)
    line = bench.memory_line({"service_rss_kib_per_call": 61.94, "bare_rss_kib_per_call": 34.02})
    assert line.startswith("61.9 KiB (bare 34.0; ")
    assert "peak resident size above the idle process" in line
    no_bare = bench.memory_line({"service_rss_kib_per_call": 50.0, "bare_rss_kib_per_call": None})
    assert no_bare.startswith("50.0 KiB (bare -; ")
    unread = bench.memory_line({"service_rss_kib_per_call": None, "bare_rss_kib_per_call": 30.0})
    assert unread.startswith("- ")


def test_each_run_says_what_a_call_costs_beyond_its_streaming() -> None:
    bench = load_script(BENCH)
    fixed = bench.fixed_cpu_ms_per_call
    # 3.0 CPU s over 5 call-minutes of 100 calls. At a steady 0.1 CPU s per call-minute the
    # streaming took 0.5 s, so 2.5 s (25 ms a call) went beyond it; at 0.5, 2.5 s and 0.5 s.
    whole = {"server_cpu_s": 3.0, "call_minutes": 5.0}
    assert fixed(whole, 0.5, 100) == 5.0
    assert fixed(whole, 0.1, 100) == 25.0
    assert fixed(whole, 0.5, 0) is None
    assert fixed(whole, None, 100) is None
    assert fixed({"server_cpu_s": None, "server_cpu_per_call_minute": None}, 0.5, 100) is None
    line = bench.fixed_line(
        {"service_fixed_cpu_ms_per_call": 11.64, "bare_fixed_cpu_ms_per_call": 2.04}
    )
    assert line.startswith("11.6 CPU ms beyond streaming (bare 2.0): ")
    assert (
        bench.fixed_line({"service_fixed_cpu_ms_per_call": None, "bare_fixed_cpu_ms_per_call": 2.0})
        == "-"
    )
