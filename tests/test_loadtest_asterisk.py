"""``ivr loadtest --platform asterisk`` against the real service (in process) and the bare RTP
reference (``bench/reference/bare_rtp_server.py``). The media plane runs in real time, so the
numbers are kept small."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ivr.config import load_config
from ivr.harness.loadtest import add_loadtest_parser, asterisk_options_from_args, run_loadtest_cli
from ivr.harness.loadtest.asterisk import (
    DEFAULT_ASTERISK_TO,
    AsteriskLoadtestOptions,
    format_asterisk_report,
    run_asterisk_loadtest,
)
from ivr.harness.loadtest.core import parse_ports
from ivr.service import create_app

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "asterisk-demo.toml"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_range(size: int) -> tuple[int, int]:
    low = random.randrange(43000, 47000 - size)
    return low, low + size - 1


@pytest.fixture
async def service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str]]:
    """The service with [asterisk] pointed at a free port; yields (its URL, that HOST:PORT)."""
    monkeypatch.setenv("IVR_MASTER_KEY", "11" * 32)
    monkeypatch.setenv("ARI_PASSWORD", "demo")
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_START", 0.01)
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_MAX", 0.05)
    ari = f"127.0.0.1:{_free_port()}"
    low, high = _port_range(64)
    text = DEMO.read_text()
    assert 'url = "http://127.0.0.1:8088/ari"' in text and 'rtp_ports = "40000-40999"' in text
    text = text.replace("127.0.0.1:8088", ari).replace("40000-40999", f"{low}-{high}")
    path = tmp_path / "asterisk.toml"
    path.write_text(text)
    server = TestServer(create_app(load_config(path), tmp_path / "var", fsync=False))
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", ari
    finally:
        await server.close()


def _quiet(**kw: object) -> AsteriskLoadtestOptions:
    low, high = _port_range(32)
    kw.setdefault("bare_ports", f"{low}-{high}")
    return AsteriskLoadtestOptions(progress_interval=0, **kw)  # type: ignore[arg-type]


async def test_asterisk_loadtest_with_reference(service: tuple[str, str]) -> None:
    url, ari = service
    report = await asyncio.wait_for(
        run_asterisk_loadtest(
            _quiet(url=url, ari_listen=ari, calls=4, duration=1.5, ramp=0.2, connect_timeout=10)
        ),
        60,
    )
    s = report["service"]
    assert report["calls_completed"] == 4, report["errors"]
    assert report["calls_failed"] == 0
    assert s["frames_sent"] == 4 * 75
    assert s["frames_stored"] == s["frames_sent"] > 0
    assert report["frames_lost"] == 0 and report["rtp_lost"] == 0
    assert s["server_frames_lost"] == 0 and s["send_errors"] == 0
    assert s["counters"]["calls"] == 4 and s["counters"]["calls_completed"] == 4
    assert s["finalised"] is True
    assert s["ari_setup_ms"]["count"] == 4 and s["ari_requests"] > 4 * 4
    assert s["hangup_to_final_ms"]["count"] == 4
    assert s["first_prompt_ms"]["count"] == 0  # the none line plays nothing
    assert s["cost"]["window"] and s["cost"]["server_cpu_per_call_minute"] > 0
    assert s["ticker"]["ticks"] > 50
    ref = report["reference"]
    assert ref is not None, report["reference_error"]
    assert ref["streams_completed"] == 4
    assert ref["frames_received"] == ref["frames_sent"] == 4 * 75
    assert report["bare_cpu_per_call_minute"] > 0
    assert report["cpu_ratio"] > 0
    assert report["ok"] is True
    text = format_asterisk_report(report)
    assert "cpu ratio" in text and "result" in text and "OK" in text
    json.dumps(report)


async def test_asterisk_loadtest_opt_in_line_presses_and_times_the_prompt(
    service: tuple[str, str],
) -> None:
    url, ari = service
    report = await asyncio.wait_for(
        run_asterisk_loadtest(
            _quiet(
                url=url,
                ari_listen=ari,
                to="+15550100001",
                calls=2,
                duration=0.6,
                ramp=0.1,
                press_after=0.3,
                reference=False,
                connect_timeout=10,
            )
        ),
        60,
    )
    s = report["service"]
    assert report["press"] == "1"
    assert report["calls_completed"] == 2, report["errors"]
    assert s["frames_stored"] == s["frames_sent"] == 2 * 30
    assert s["decision_ms"]["count"] == 2
    assert s["first_prompt_ms"]["count"] == 2 and s["first_prompt_ms"]["p50"] < 300
    assert s["prompt_packets"] > 2 * 10
    assert report["reference"] is None and report["cpu_ratio"] is None
    assert report["ok"] is True


async def test_asterisk_loadtest_without_a_service_listening_fails_cleanly() -> None:
    report = await run_asterisk_loadtest(
        _quiet(
            url=f"http://127.0.0.1:{_free_port()}",
            ari_listen=f"127.0.0.1:{_free_port()}",
            calls=2,
            duration=0.2,
            connect_timeout=0.5,
        )
    )
    assert report["calls_failed"] == 2 and report["ok"] is False
    assert "healthz" in report["errors"][0]
    assert report["reference"] is None and report["reference_error"].startswith("skipped")
    assert "FAILED" in format_asterisk_report(report)


def test_cli_wiring_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_parser(parser.add_subparsers())
    args = parser.parse_args(["loadtest", "--platform", "asterisk"])
    monkeypatch.delenv("ARI_PASSWORD", raising=False)
    options = asterisk_options_from_args(args)
    assert options.to == DEFAULT_ASTERISK_TO == "+15550100004"
    assert options.ari_listen == "127.0.0.1:8088" and options.ari_app == "ivr"
    assert options.resolved_password() == "demo" and options.resolved_press() == ""
    monkeypatch.setenv("ARI_PASSWORD", "from-env")
    assert options.resolved_password() == "from-env"
    assert options.bare_port_range() == (41000, 41000 + 50 + 16 - 1)
    opt_in = asterisk_options_from_args(
        parser.parse_args(["loadtest", "--platform", "asterisk", "--to", "+15550100001"])
    )
    assert opt_in.resolved_press() == "1" and opt_in.press_after == 0.5
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    bad = ["loadtest", "--platform", "asterisk", "--ari-listen", "nope", "--json"]
    assert run_loadtest_cli(parser.parse_args(bad)) == 2
    assert "--ari-listen" in stderr.getvalue()
    assert (
        run_loadtest_cli(parser.parse_args(["loadtest", "--platform", "asterisk", "--calls", "0"]))
        == 2
    )
    # the Twilio default is unchanged
    from ivr.harness.loadtest import options_from_args

    assert options_from_args(parser.parse_args(["loadtest"])).to == "+15550100001"


async def test_bare_rtp_server_counts_and_seals(tmp_path: Path) -> None:
    low, high = _port_range(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "reference" / "bare_rtp_server.py"),
        "--ports",
        f"{low}-{high}",
        "--data-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # it imports ivr, from this tree
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "ready" and int(line[2]) >= 1, line
        http = f"http://127.0.0.1:{line[1]}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{http}/ports") as resp:
                port = (await resp.json())["ports"][0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for n in range(120):  # 2.4 s of audio: two chunks sealed on the way
                    header = bytes([0x80, 0]) + (n).to_bytes(2, "big")
                    header += (n * 160).to_bytes(4, "big") + b"\x00\x00\x00\x07"
                    s.sendto(header + bytes(160), ("127.0.0.1", port))
                    if n % 20 == 0:
                        await asyncio.sleep(0.005)
            for _ in range(50):
                async with session.get(f"{http}/stats") as resp:
                    stats = await resp.json()
                if stats["frames"] >= 120:
                    break
                await asyncio.sleep(0.02)
            assert stats["frames"] == 120 and stats["streams"] == 1
            assert stats["chunks"] == 2 and stats["payload_bytes_sealed"] == 100 * 160
            async with session.get(f"{http}/cpu") as resp:
                assert (await resp.json())["cpu_seconds"] > 0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    sealed = (tmp_path / f"rtp-{port}.bin").read_bytes()
    assert len(sealed) == 3 * (4 + 16) + 120 * 160  # three chunks, the last one at exit


def test_parse_ports() -> None:
    assert parse_ports("41000-41009") == (41000, 41009)
    assert parse_ports("5000") == (5000, 5000)
    for bad in ("x", "10-5", "0-10", "70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)
