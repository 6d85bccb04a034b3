"""``ivr loadtest`` against the real service (in process); the bare reference comparison is
``bench/calls.py`` (tests/test_bench_calls.py).

The recording phase runs in real time by definition, so these tests take a few seconds each:
the numbers are kept small (a handful of calls, 1–1.5 s of recording each).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli.loadtest import add_loadtest_parser, options_from_args, run_loadtest_cli
from ivr.config import DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.harness.loadtest import LoadtestOptions, format_report, run_loadtest
from ivr.harness.loadtest.core import StreamRun, tcp_segments
from ivr.harness.loadtest.twilio import no_recording_stream
from ivr.harness.twilio_sim import CallResult
from ivr.harness.twilio_wire import DEMO_AUTH_TOKEN
from ivr.platforms.twilio.messages import twiml_reject
from ivr.service import create_app


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("IVR_MASTER_KEY", "11" * 32)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    app = create_app(load_config(None), tmp_path / "var", fsync=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def _quiet(**kw: object) -> LoadtestOptions:
    return LoadtestOptions(progress_interval=0, **kw)  # type: ignore[arg-type]


async def test_loadtest_against_the_service(service: str) -> None:
    report = await asyncio.wait_for(
        run_loadtest(_quiet(url=service, calls=4, duration=1.5, ramp=0.2)), 60
    )
    s = report["service"]
    assert report["calls_completed"] == 4, s["errors"]
    assert report["calls_failed"] == 0 and s["errors"] == []
    assert report["frames_sent"] == 4 * 2 * 75  # both tracks, 50 frames/s, 1.5 s
    # The opt-in line records the consent stream after the key press too.
    assert s["frames_sent_consent"] > 0
    assert s["frames_expected"] == s["frames_stored"] == report["frames_stored"] > 0
    assert report["frames_lost"] == 0
    assert s["webhook_ms"]["count"] == 12
    assert s["webhook_ms"]["p50"] is not None and s["webhook_ms"]["p99"] is not None
    assert set(s["webhook_ms"]) >= {"voice", "continue", "status"}
    assert s["first_prompt_ms"]["count"] == 4 and s["first_prompt_ms"]["p99"] is not None
    assert report["server_cpu_per_call_minute"] > 0
    assert s["cost"]["sender_cpu_s"] >= 0
    # The media went over loopback TCP: the window saw its segments, and the ACKs of them.
    assert s["cost"]["tcp_data_segments"] > 0 and s["cost"]["tcp_acks_per_data_segment"] >= 0
    assert s["ticker"]["late_p99_ms"] is not None
    assert "reference" not in report and "cpu_ratio" not in report  # make bench-calls
    assert report["ok"] is True
    text = format_report(report)
    assert "service cpu" in text and "OK" in text and "cpu ratio" not in text
    assert "tcp on this host" in text and "bare ACKs per data segment" in text
    json.dumps(report)  # --json must be able to print it


@pytest.mark.parametrize("line", ["+15550100002", "+15550100003"])
async def test_loadtest_on_the_opt_out_and_notice_lines(service: str, line: str) -> None:
    report = await asyncio.wait_for(
        run_loadtest(_quiet(url=service, calls=2, duration=1.0, ramp=0.1, to=line)),
        60,
    )
    s = report["service"]
    assert report["calls_completed"] == 2, s["errors"]
    assert report["press"] is None
    assert s["frames_sent_consent"] == 0  # nothing is recorded before the notice has played
    assert s["frames_stored"] == s["frames_sent"] == 2 * 2 * 50
    assert report["frames_lost"] == 0
    assert report["ok"] is True


async def test_wrong_auth_token_fails_calls_with_exit_code_1(
    service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "loadtest",
            "--url",
            service,
            "--calls",
            "3",
            "--duration",
            "1",
            "--ramp",
            "0",
            "--auth-token",
            "not-the-token",
            "--json",
            "--progress-interval",
            "0",
        ]
    )
    assert args.func is run_loadtest_cli
    code = await asyncio.wait_for(asyncio.to_thread(args.func, args), 30)
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["calls_failed"] == 3 and report["calls_completed"] == 0
    errors = report["service"]["errors"]
    assert errors and all("voice webhook" in e and "HTTP 403" in e for e in errors)
    assert report["ok"] is False


def test_options_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEMO_AUTH_TOKEN == DEMO_TWILIO_AUTH_TOKEN
    parser = argparse.ArgumentParser()
    add_loadtest_parser(parser.add_subparsers())
    options = options_from_args(parser.parse_args(["loadtest"]))
    assert (options.url, options.calls, options.duration) == ("http://127.0.0.1:8080", 50, 20.0)
    assert options.resolved_ramp() == 1.0 and options.resolved_press() == "1"
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    assert options.resolved_token() == "from-env"
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    assert options.resolved_token() == DEMO_AUTH_TOKEN
    notice = options_from_args(parser.parse_args(["loadtest", "--to", "+15550100003"]))
    assert notice.resolved_press() == ""
    big = options_from_args(parser.parse_args(["loadtest", "--calls", "2000"]))
    assert big.resolved_ramp() == 10.0
    assert big.deadline() > big.resolved_ramp() + big.duration
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run_loadtest_cli(parser.parse_args(["loadtest", "--calls", "0", "--json"])) == 2
    assert "--calls" in stderr.getvalue()


def test_the_reference_comparison_is_make_bench_calls(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    loadtest = add_loadtest_parser(parser.add_subparsers())
    assert "`make bench-calls`" in " ".join(loadtest.format_help().split())
    for flag in (["--no-reference"], ["--bare-ports", "41000-41099"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["loadtest", *flag])
    assert "unrecognized arguments" in capsys.readouterr().err


# -- TCP segments: who pays for the ACKs of the media -----------------------------------------
SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 382638846
Tcp: RtoAlgorithm RtoMin ActiveOpens OutSegs RetransSegs
Tcp: 1 200 5000 1234567 12
Udp: InDatagrams NoPorts
Udp: 10 0
"""
NETSTAT = """TcpExt: SyncookiesSent DelayedACKs TCPOrigDataSent TCPDelivered
TcpExt: 0 44 765432 765400
IpExt: InNoRoutes InOctets
IpExt: 0 99
"""


def test_tcp_segments_reads_the_kernels_counters(tmp_path: Path) -> None:
    snmp, netstat = tmp_path / "snmp", tmp_path / "netstat"
    snmp.write_text(SNMP)
    netstat.write_text(NETSTAT)
    assert tcp_segments(str(snmp), str(netstat)) == (1234567, 765432)
    # A kernel without the counter, or no /proc at all: nothing, rather than a wrong figure.
    netstat.write_text(NETSTAT.replace("TCPOrigDataSent", "TCPOrigDataSEnt"))
    assert tcp_segments(str(snmp), str(netstat)) is None
    assert tcp_segments(str(tmp_path / "none"), str(netstat)) is None
    # This machine's own counters (the real /proc), which only grow.
    first = tcp_segments()
    assert first is not None and first[0] >= first[1] >= 0


def test_acks_per_data_segment_over_the_window() -> None:
    acks = StreamRun._acks
    assert acks((1000, 600), (1300, 800)) == {
        "tcp_data_segments": 200,
        "tcp_acks_per_data_segment": 0.5,  # 300 segments sent, 200 of them data
    }
    assert acks(None, (1300, 800)) == {} and acks((1000, 600), None) == {}
    assert acks((1000, 600), (1100, 600)) == {}  # no data sent: no ratio to give


def test_a_call_turned_away_at_the_cap_is_told_apart_from_a_lost_recording() -> None:
    """Over ``[limits] max_calls`` the service answers ``<Reject reason="busy"/>``
    (ivr/platforms/twilio/busy.py): the generator says so, not "no recording stream"."""
    busy = CallResult("CA1", twiml=[twiml_reject("busy")])
    assert no_recording_stream(busy).startswith("turned away by the service (busy)")
    assert "max_calls" in no_recording_stream(busy)
    streamed = CallResult("CA2", twiml=['<?xml version="1.0"?><Response><Connect/></Response>'])
    assert no_recording_stream(streamed) == "no recording stream (decision -)"
    assert no_recording_stream(CallResult("CA3", twiml=["not xml"])).startswith("no recording")
    assert no_recording_stream(CallResult("CA4")).startswith("no recording")
