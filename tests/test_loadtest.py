"""``ivr loadtest`` against the real service (in process) and the bare reference server
(``bench/reference/bare_ws_server.py``).

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

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ivr.config import DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.harness.loadtest import (
    LoadtestOptions,
    add_loadtest_parser,
    format_report,
    options_from_args,
    run_loadtest,
    run_loadtest_cli,
)
from ivr.harness.loadtest.twilio import POOL
from ivr.harness.twilio_wire import DEMO_AUTH_TOKEN, media_template
from ivr.harness.wsclient import OP_CLOSE, OP_PONG, RawWebSocket, WebSocketError, text_frame
from ivr.service import create_app

ROOT = Path(__file__).resolve().parent.parent


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


def _quiet(**kw: object) -> LoadtestOptions:
    return LoadtestOptions(progress_interval=0, **kw)  # type: ignore[arg-type]


async def test_loadtest_against_the_service_with_reference(service: str) -> None:
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
    assert report["bare_cpu_per_call_minute"] > 0
    assert report["cpu_ratio"] is not None and report["cpu_ratio"] > 0
    assert s["cost"]["sender_cpu_s"] >= 0
    assert s["ticker"]["late_p99_ms"] is not None
    ref = report["reference"]
    assert ref["streams_completed"] == 4 and ref["frames_sent"] == 4 * 2 * 75
    assert ref["frames_received"] == ref["frames_sent"]
    assert report["ok"] is True
    text = format_report(report)
    assert "cpu ratio" in text and "OK" in text
    json.dumps(report)  # --json must be able to print it


@pytest.mark.parametrize("line", ["+15550100002", "+15550100003"])
async def test_loadtest_on_the_opt_out_and_notice_lines(service: str, line: str) -> None:
    report = await asyncio.wait_for(
        run_loadtest(
            _quiet(url=service, calls=2, duration=1.0, ramp=0.1, to=line, reference=False)
        ),
        60,
    )
    s = report["service"]
    assert report["calls_completed"] == 2, s["errors"]
    assert report["press"] is None
    assert s["frames_sent_consent"] == 0  # nothing is recorded before the notice has played
    assert s["frames_stored"] == s["frames_sent"] == 2 * 2 * 50
    assert report["frames_lost"] == 0 and report["reference"] is None
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
            "--no-reference",
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
    assert options.reference is True
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    assert options.resolved_token() == "from-env"
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    assert options.resolved_token() == DEMO_AUTH_TOKEN
    notice = options_from_args(parser.parse_args(["loadtest", "--to", "+15550100003"]))
    assert notice.resolved_press() == ""
    big = options_from_args(parser.parse_args(["loadtest", "--calls", "2000", "--no-reference"]))
    assert big.resolved_ramp() == 10.0 and big.reference is False
    assert big.deadline() > big.resolved_ramp() + big.duration
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run_loadtest_cli(parser.parse_args(["loadtest", "--calls", "0", "--json"])) == 2
    assert "--calls" in stderr.getvalue()


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
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{bare_port}/cpu") as resp,
    ):
        assert (await resp.json())["cpu_seconds"] > 0


async def test_rawws_handshake_refused_and_server_messages(bare_port: int, service: str) -> None:
    with pytest.raises(WebSocketError, match="upgrade refused") as refused:
        await RawWebSocket.connect(f"ws://127.0.0.1:{bare_port}/stats", timeout=10)
    assert refused.value.status == 200  # a plain HTTP answer is no upgrade
    with pytest.raises(WebSocketError, match="ws://"):
        await RawWebSocket.connect(f"http://127.0.0.1:{bare_port}/ws")
    # The service's consent stream refuses a start without a valid token with close 1008.
    ws = await RawWebSocket.connect(service.replace("http", "ws") + "/twilio/stream/consent")
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
