"""``ivr loadtest --platform asterisk`` against the real service (in process); the bare RTP
reference comparison is ``bench/calls.py`` (tests/test_bench_calls.py). The media plane runs in
real time, so the numbers are kept small."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli.loadtest import add_loadtest_parser, options_from_args, run_loadtest_cli
from ivr.config import load_config
from ivr.harness.loadtest import AsteriskLoadtestOptions, format_report, run_loadtest
from ivr.harness.loadtest.asterisk import DEFAULT_ASTERISK_TO
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
    return AsteriskLoadtestOptions(progress_interval=0, **kw)  # type: ignore[arg-type]


async def test_asterisk_loadtest(service: tuple[str, str]) -> None:
    url, ari = service
    report = await asyncio.wait_for(
        run_loadtest(
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
    assert not any(k.startswith("tcp_") for k in s["cost"])  # RTP is UDP: no ACKs to count
    assert s["ticker"]["ticks"] > 50
    assert report["platform"] == "asterisk" and "reference" not in report
    assert report["ok"] is True
    text = format_report(report)
    assert "service cpu" in text and "result" in text and "OK" in text
    json.dumps(report)


async def test_asterisk_loadtest_opt_in_line_presses_and_times_the_prompt(
    service: tuple[str, str],
) -> None:
    url, ari = service
    report = await asyncio.wait_for(
        run_loadtest(
            _quiet(
                url=url,
                ari_listen=ari,
                to="+15550100001",
                calls=2,
                duration=0.6,
                ramp=0.1,
                press_after=0.3,
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
    assert "cpu_ratio" not in report  # make bench-calls
    assert report["ok"] is True


async def test_asterisk_loadtest_without_a_service_listening_fails_cleanly() -> None:
    report = await run_loadtest(
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
    assert "FAILED" in format_report(report)


def test_cli_wiring_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_parser(parser.add_subparsers())
    args = parser.parse_args(["loadtest", "--platform", "asterisk"])
    monkeypatch.delenv("ARI_PASSWORD", raising=False)
    options = options_from_args(args)
    assert isinstance(options, AsteriskLoadtestOptions)
    assert options.to == DEFAULT_ASTERISK_TO == "+15550100004"
    assert options.ari_listen == "127.0.0.1:8088" and options.ari_app == "ivr"
    assert options.resolved_password() == "demo" and options.resolved_press() == ""
    monkeypatch.setenv("ARI_PASSWORD", "from-env")
    assert options.resolved_password() == "from-env"
    opt_in = options_from_args(
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
    assert options_from_args(parser.parse_args(["loadtest"])).to == "+15550100001"
