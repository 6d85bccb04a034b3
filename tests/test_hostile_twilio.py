"""Hostile input on the Twilio surfaces and the admin API's parameters (issue 12, point 1).

Every malformed webhook, stream message, stream token and API parameter gets its documented
answer (docs/twilio.md, "What the service answers to bad input"): never an HTTP 500, a close
1011 or a traceback in the log. A jump in a stream's sequence numbers or media clock is a
counted gap, never a new baseline: the frames after it are stored, the recording keeps its
real length, and ``frames_lost`` says what was dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from ivr.api import token_digest
from ivr.config import DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.gdpr.recording_files import decode_recording
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.app import TWILIO
from ivr.platforms.twilio.messages import Media, media_values, parse_stream_message
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature
from ivr.service import VAULT, create_app
from storage.catalog import RecordingStatus

CONSENT_LINE = "+15550100001"
EMERGENCY_LINE = "+15550100004"  # vital interests: recorded at once, then forwarded
MESSAGE_LINE = "+15550100005"  # no forward_to, max_recording_seconds 300
DPO_TOKEN = "hostile-dpo"


@pytest.fixture(autouse=True)
def no_tracebacks(caplog):
    """Fail any test that logs an error or a traceback: hostile input is answered, not raised."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)


# -- helpers --------------------------------------------------------------------------------------
def form(to: str = CONSENT_LINE, **extra: str) -> dict[str, str]:
    return {
        "CallSid": "CA" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": "+46701234567",
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        **extra,
    }


async def post(s: aiohttp.ClientSession, url: str, path: str, data: dict[str, str]):
    headers = {SIGNATURE_HEADER: compute_signature(DEMO_TWILIO_AUTH_TOKEN, url + path, data)}
    return await s.post(url + path, data=data, headers=headers)


async def raw_http(url: str, head: bytes, body: bytes = b"", timeout: float = 5.0) -> int:
    """Send exactly these bytes; the status code the service answers with."""
    u = URL(url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):  # answered before it was all sent
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1])
    finally:
        writer.close()


def request_head(path: str, headers: dict[str, bytes | str], host: str = "localhost") -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), f"Host: {host}".encode()]
    for name, value in headers.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def start_msg(call_sid: str, token: str | None, seq: str = "1", tracks=("inbound",)) -> str:
    sid = "MZ" + secrets.token_hex(16)
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": seq,
            "streamSid": sid,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "streamSid": sid,
                "tracks": list(tracks),
                "customParameters": {"token": token} if token is not None else {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_msg(seq, ts, payload: bytes = b"\xff" * 160, track: str = "inbound", chunk=None) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": track,
                "chunk": str(seq) if chunk is None else chunk,
                "timestamp": str(ts),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


async def start_call(s, url, to=CONSENT_LINE):
    data = form(to)
    resp = await post(s, url, "/twilio/voice", data)
    stream = ET.fromstring(await resp.text()).find("Connect/Stream")
    return data, stream.get("url"), stream.find("Parameter").get("value")


async def closed_with(ws) -> int | None:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data
        if msg.type == aiohttp.WSMsgType.CLOSED:
            return ws.close_code


async def settled(ws) -> None:
    """Everything sent before this has been acted on: the service reads in order, so its pong
    to this ping comes after it. Fails if the stream was closed instead."""
    await ws.ping(b"settled")
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type == aiohttp.WSMsgType.PONG:
            return
        assert msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg


async def recording_stream(s, url):
    """An emergency-line call handed off to its recording stream: (form, websocket)."""
    data, ws_url, token = await start_call(s, url, to=EMERGENCY_LINE)
    async with s.ws_connect(ws_url, autoping=False) as consent:
        await consent.send_str(start_msg(data["CallSid"], token))
        assert await closed_with(consent) == 1000  # not asked: handed off at once
    resp = await post(s, url, "/twilio/continue", data)
    stream = ET.fromstring(await resp.text()).find("Start/Stream")
    ws = await s.ws_connect(stream.get("url"), autoping=False)
    token = stream.find("Parameter").get("value")
    await ws.send_str(start_msg(data["CallSid"], token, tracks=("inbound", "outbound")))
    return data, ws


async def finish(s, url, data, ws) -> dict:
    await ws.send_str(json.dumps({"event": "stop", "sequenceNumber": "999999"}))
    await closed_with(ws)
    await ws.close()
    resp = await post(s, url, "/twilio/status", {**data, "CallStatus": "completed"})
    assert resp.status == 200
    return await resp.json()


def recording_row(app, recording_id):
    return app[VAULT].get(recording_id)


# -- webhooks -------------------------------------------------------------------------------------
async def test_a_large_webhook_body_is_refused_before_it_is_read(service):
    app, url = service
    head = request_head(
        "/twilio/voice",
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "900000"},
    )
    # Only the head is sent: the answer cannot have waited for 900 KB.
    assert await raw_http(url, head, timeout=3) == 413
    chunked = request_head(
        "/twilio/voice",
        {"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
    )
    piece = b"a" * 32768
    body = (b"%x\r\n" % len(piece) + piece + b"\r\n") * 3 + b"0\r\n\r\n"
    assert await raw_http(url, chunked, body) == 413
    assert app[TWILIO].counters["webhooks_too_large"] == 2


async def test_a_non_ascii_signature_is_refused_with_403(service):
    _, url = service
    body = "&".join(f"{k}={v}" for k, v in form().items()).replace("+", "%2B").encode()
    head = request_head(
        "/twilio/voice",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(len(body)),
            SIGNATURE_HEADER: "\u00e9\u00b2=".encode(),
        },
    )
    assert await raw_http(url, head, body) == 403
    head = request_head(
        "/twilio/voice",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(len(body)),
            SIGNATURE_HEADER: b"\xff\xfe",
        },
        host="ivr\xff.example",
    )
    assert await raw_http(url, head, body) == 403


@pytest.mark.parametrize(
    "duration",
    ["\u00b2", "\u0661\u0662", "1e3", "-1", "9" * 40],
    ids=["superscript", "arabic-indic", "exponent", "negative", "40-digits"],
)
async def test_call_duration_in_anything_but_ascii_digits_is_400(service, duration):
    app, url = service
    async with aiohttp.ClientSession() as s:
        resp = await post(
            s, url, "/twilio/status", form(CallStatus="completed", CallDuration=duration)
        )
        assert resp.status == 400
    assert app[TWILIO].counters["webhooks_bad"] == 1


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"CallSid=%ff%fe&To=%2B15550100001"),
        ("application/x-www-form-urlencoded", b"CallSid=\xff\xfe"),
        ("application/x-www-form-urlencoded", b"CallSid=CA00&To"),
        ("application/x-www-form-urlencoded", b"&".join([b"a=1"] * 1000)),
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: broken"),
        (
            "multipart/form-data; boundary=zzz",
            b'--zzz\r\nContent-Disposition: form-data; name="CallSid"\r\n\r\nCA1\r\n--zzz--\r\n',
        ),
        ("application/json", b'{"CallSid": "CA"}'),
        ("text/plain; charset=\xff", b"CallSid=CA"),
    ],
    ids=[
        "invalid-utf8-escaped",
        "invalid-utf8-raw",
        "field-without-equals",
        "1000-fields",
        "broken-multipart",
        "multipart",
        "json",
        "non-ascii-content-type",
    ],
)
async def test_a_body_that_is_not_a_form_is_400(service, content_type, body):
    _, url = service
    for path in ("/twilio/voice", "/twilio/status", "/twilio/stream-status"):
        head = request_head(
            path, {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(len(body))}
        )
        assert await raw_http(url, head, body) == 400, path


async def test_refusals_anyone_can_provoke_are_logged_once_a_minute(service, caplog):
    app, url = service
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            resp = await s.post(url + "/twilio/voice", data=form())
            assert resp.status == 403
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert app[TWILIO].counters["webhooks_forbidden"] == 30


# -- stream messages ------------------------------------------------------------------------------
BAD_MESSAGES = {
    "superscript sequenceNumber on dtmf": json.dumps(
        {"event": "dtmf", "sequenceNumber": "\u00b2", "dtmf": {"digit": "1"}}
    ),
    "superscript sequenceNumber on mark": json.dumps(
        {"event": "mark", "sequenceNumber": "\u00b2", "mark": {"name": "x"}}
    ),
    "superscript sequenceNumber on stop": json.dumps({"event": "stop", "sequenceNumber": "\u00b2"}),
    "Arabic-Indic sequenceNumber": media_msg("\u0663", 0),
    "Arabic-Indic timestamp": media_msg(3, "\u0661\u0662"),
    "fullwidth timestamp": media_msg(3, "\uff11"),
    "5,000 brackets": "[" * 5000,
    "5,000 braces": '{"a":' * 5000,
    "Infinity": (
        '{"event":"media","sequenceNumber":Infinity,"media":{"timestamp":"0","payload":""}}'
    ),
    "NaN": '{"event":"media","sequenceNumber":"3","media":{"timestamp":NaN,"payload":""}}',
    "-Infinity dtmf": '{"event":"dtmf","sequenceNumber":-Infinity,"dtmf":{"digit":"1"}}',
    "float sequenceNumber": media_msg(3, 0).replace(
        '"sequenceNumber": "3"', '"sequenceNumber": 3.5'
    ),
    "huge exponent": media_msg(3, 0).replace('"sequenceNumber": "3"', '"sequenceNumber": 1e400'),
    "non-ASCII base64": json.dumps(
        {
            "event": "media",
            "sequenceNumber": "3",
            "media": {"timestamp": "0", "payload": "\u00ff" * 8},
        }
    ),
    "list as track": json.dumps(
        {
            "event": "media",
            "sequenceNumber": "3",
            "media": {"timestamp": "0", "payload": "", "track": []},
        }
    ),
    "media on a track the stream did not start": media_msg(3, 0, track="outbound"),
}


@pytest.mark.parametrize("text", list(BAD_MESSAGES.values()), ids=list(BAD_MESSAGES))
async def test_a_malformed_message_is_dropped_and_counted(service, text):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.send_str(text)
            await ws.send_str(media_msg(2, 0))
            await settled(ws)
            assert not ws.closed
    counters = app[TWILIO].counters
    assert counters["messages_bad"] == 1, dict(counters)


async def test_fifty_malformed_messages_close_the_stream_with_1007(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            for text in list(BAD_MESSAGES.values()) * 4:
                await ws.send_str(text)
            assert await closed_with(ws) == 1007


async def test_a_chunk_in_unicode_digits_is_ignored(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url, to=EMERGENCY_LINE)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.send_str(media_msg(2, 0, chunk="\u00b2"))
            await closed_with(ws)
    assert app[TWILIO].counters["messages_bad"] == 0


async def test_a_mark_named_in_unicode_digits_is_no_prompt(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            for seq, name in enumerate(("play-\u00b2", "play-" + "9" * 5000, "play-"), start=2):
                await ws.send_str(
                    json.dumps(
                        {"event": "mark", "sequenceNumber": str(seq), "mark": {"name": name}}
                    )
                )
            await settled(ws)
            assert not ws.closed


@pytest.mark.parametrize(
    "make_token",
    [
        lambda token: "v1.consent.1\u00b23.abc",  # isdigit() but not int()
        lambda token: token[:-2] + "\u00e9\u00e9",  # a non-ASCII mac
        lambda token: token.replace("consent", "c\u00f6nsent"),
        lambda token: "v1.consent." + "9" * 5000 + ".abc",
        lambda token: token + "." * 10_000,
        lambda token: "v1.\U0001f600.1.x",
    ],
    ids=["superscript-expiry", "non-ascii-mac", "non-ascii-kind", "long-expiry", "dots", "emoji"],
)
async def test_a_malformed_stream_token_closes_with_1008(service, make_token):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], make_token(token)))
            assert await closed_with(ws) == 1008


async def test_a_start_numbered_in_unicode_digits_is_dropped_then_closed_1008(service, monkeypatch):
    monkeypatch.setattr("ivr.platforms.twilio.app.START_TIMEOUT_SECONDS", 0.2)
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token, seq="\u00b2"))
            assert await closed_with(ws) == 1008  # no start (that one was not one) in time
    assert app[TWILIO].counters["messages_bad"] == 1


# -- jumps ----------------------------------------------------------------------------------------
async def test_one_wild_sequence_number_is_a_gap_not_a_new_baseline(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws = await recording_stream(s, url)
        seq = 2
        for n in range(250):
            if n == 100:
                await ws.send_str(media_msg(99_999_999_999, n * 20))  # one broken number
            await ws.send_str(media_msg(seq, n * 20))
            seq += 1
        summary = await finish(s, url, data, ws)
    assert summary["recording_status"] == "complete"
    assert summary["frames_lost"] == 1  # the one with the broken number, dropped and told
    row = recording_row(app, summary["recording_id"])
    assert 4900 <= row.duration_ms <= 5100
    counters = app[TWILIO].counters
    assert counters["sequence_jumps"] == 1 and counters["messages_out_of_order"] == 0


async def test_media_that_only_the_reference_parser_reads_is_recorded_as_any_other(service):
    """orjson refuses a lone surrogate where the standard library's parser takes it: a media
    message with one in a field we do not read is still audio (taken by ``parse_slowly``), not
    "media before start"."""
    app, url = service
    odd = media_msg(52, 50 * 20).replace(
        '"event": "media"', '"streamSid": "\\ud800", "event": "media"'
    )
    assert media_values(odd) is None and isinstance(parse_stream_message(odd), Media)
    async with aiohttp.ClientSession() as s:
        data, ws = await recording_stream(s, url)
        for n in range(100):
            await ws.send_str(odd if n == 50 else media_msg(n + 2, n * 20))
        summary = await finish(s, url, data, ws)
    assert summary["recording_status"] == "complete" and summary["frames_lost"] == 0
    assert app[TWILIO].counters["messages_bad"] == 0
    assert 1900 <= recording_row(app, summary["recording_id"]).duration_ms <= 2100


async def test_a_stream_that_really_renumbers_follows_after_one_message(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws = await recording_stream(s, url)
        for n in range(200):
            seq = 2 + n if n < 100 else 5_000_000 + n
            await ws.send_str(media_msg(seq, n * 20))
        summary = await finish(s, url, data, ws)
    assert summary["frames_stored"] == 199 and summary["frames_lost"] == 1
    assert app[TWILIO].counters["sequence_renumbered"] == 1


async def test_one_wild_timestamp_does_not_stretch_the_recording(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws = await recording_stream(s, url)
        for n in range(250):
            ts = 4_000_000_000 if n == 100 else n * 20
            await ws.send_str(media_msg(2 + n, ts))
        summary = await finish(s, url, data, ws)
    assert summary["recording_status"] == "complete"
    assert summary["frames_stored"] == 250 and summary["frames_lost"] == 0
    row = recording_row(app, summary["recording_id"])
    assert 4900 <= row.duration_ms <= 5100  # not 46 days
    assert app[TWILIO].counters["media_timestamp_jumps"] >= 1


async def test_a_timestamp_jump_does_not_end_the_recording_early(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url, to=MESSAGE_LINE)  # max 300 s, key 1
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.send_str(
                json.dumps({"event": "dtmf", "sequenceNumber": "2", "dtmf": {"digit": "1"}})
            )
            for n in range(300):
                ts = 3_999_999_000 if n == 50 else 1000 + n * 20
                await ws.send_str(media_msg(3 + n, ts))
            await settled(ws)
            await ws.send_str(json.dumps({"event": "stop", "sequenceNumber": "400"}))
            await closed_with(ws)
        resp = await post(s, url, "/twilio/status", {**data, "CallStatus": "completed"})
        summary = await resp.json()
    assert summary["decision"] == "accepted"
    # Every frame after the key was stored: the jump neither hit the line's maximum nor ended it.
    row = recording_row(app, summary["recording_id"])
    assert row.status is RecordingStatus.COMPLETE and row.duration_ms < 10_000
    assert summary["frames_lost"] == 0


async def test_a_frame_past_the_lines_maximum_is_lost_not_stored(service, monkeypatch):
    # The stream's own check switched off: the session's bound (max_recording_seconds) holds.
    monkeypatch.setattr("ivr.calls.numbering.MAX_AHEAD_MS", 10**13)
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws = await recording_stream(s, url)
        for n in range(100):
            ts = 4_000_000_000 if n == 99 else n * 20
            await ws.send_str(media_msg(2 + n, ts))
        summary = await finish(s, url, data, ws)
    assert summary["frames_stored"] == 99 and summary["frames_lost"] == 1
    assert recording_row(app, summary["recording_id"]).duration_ms <= 2100


class AiohttpFinished(logging.Handler):
    """Counts aiohttp's access lines for paths under ``prefix`` and keeps its errors; a
    condition to wait on for either."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.INFO)
        self.prefix = prefix
        self.count = 0
        self.errors: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:  # on the loop's thread: aiohttp logs there
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(message)
            self.count += 1
        elif record.name == "aiohttp.access" and f" {self.prefix}" in message:
            self.count += 1
        self._changed.set()

    async def wait_for(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed.clear()
            await self._changed.wait()


async def test_a_peer_gone_before_the_websocket_opens_is_counted_not_a_traceback(
    tmp_path, monkeypatch
):
    """Under load a peer can give up while its upgrade waits: the handshake's answer then has
    nowhere to go. That is counted and logged as a line, never an aiohttp traceback."""
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    app = create_app(load_config(None), tmp_path / "var", fsync=False)
    left: list[str] = []

    @web.middleware
    async def peer_leaves(request: web.Request, handler):
        if request.path.startswith("/twilio/stream/") and request.transport is not None:
            request.transport.close()  # as a peer that left, seen from the server
            left.append(request.path)
        return await handler(request)

    app.middlewares.append(peer_leaves)
    # aiohttp's last word on each such request: its access line, or an error with a traceback.
    # The server stops tracking a connection once its peer is gone, so its stop does not wait
    # for these: the test does.
    finished = AiohttpFinished("/twilio/stream/")
    logging.getLogger("aiohttp").addHandler(finished)
    # The handler is not cancelled once the peer has gone, as in ivr serve (tests/conftest.py):
    # what aiohttp then does with its answer is where the traceback was.
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            _, ws_url, _ = await start_call(s, url)
            with pytest.raises(aiohttp.ClientError):
                await s.ws_connect(ws_url, autoping=False)
        async with asyncio.timeout(30):
            await finished.wait_for(lambda: finished.count >= len(left))
    finally:
        logging.getLogger("aiohttp").removeHandler(finished)
        await server.close()
    assert finished.errors == []
    # aiohttp's client tries a GET once more when a pooled connection drops: each counted.
    assert left and all(p.startswith("/twilio/stream/consent/") for p in left)
    assert app[TWILIO].counters["streams_gone_before_open"] == len(left)


async def test_a_normal_call_after_all_that_records_complete(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            for text in BAD_MESSAGES.values():
                await ws.send_str(text)
    result = await simulate_call(
        CallOptions(url=url, to=CONSENT_LINE, fast=True, presses=[(2.0, "1")], duration=3.0)
    )
    assert result.error is None and result.recording_status == "complete"
    assert result.status_response["frames_lost"] == 0


# -- export ---------------------------------------------------------------------------------------
def test_export_lays_out_no_more_than_the_recording_holds(tmp_path):
    from storage.vault import Vault

    with Vault(tmp_path, create=True, fsync=False) as vault:
        call = vault.open_call(tenant="demo", platform="test", caller=None)
        rec = vault.start_recording(
            tenant="demo",
            call_id=call,
            lawful_basis="vital_interests",
            purpose="test",
            tracks=("caller",),
            retention_until=vault.clock() + timedelta(days=1),
        )
        for n in range(250):
            # Written before the service checked timestamps: one frame 10 hours in, mid-call.
            rec.append(0, 36_000_000 if n == 100 else n * 20, b"\x10" * 160)
        row = rec.close()
        samples = decode_recording(vault, row)
    assert samples.shape[0] <= 2 * 250 * 160 + 600 * 8000  # not 10 hours (288 M samples)
    starts = samples[: 250 * 160 : 160, 0]
    assert (starts[:100] != 0).all() and (starts[101:] != 0).all()  # the real frames are there


# -- the admin API's parameters -------------------------------------------------------------------
@pytest.fixture
async def api(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    path = tmp_path / "ivr.toml"
    path.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[[lines]]\nnumber = "+46850000000"\ntenant = "acme"\npurpose = "quality"\n'
        'lawful_basis = "consent"\n'
        f'[[api_tokens]]\ntenant = "acme"\nname = "dpo"\nrole = "dpo"\n'
        f'token_sha256 = "{token_digest(DPO_TOKEN)}"\n'
    )
    app = create_app(load_config(path), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession(
        base_url=str(server.make_url("")), headers={"Authorization": f"Bearer {DPO_TOKEN}"}
    ) as session:
        yield session
    await server.close()


@pytest.mark.parametrize(
    "limit",
    ["\u00b2", "\u0661\u0660", "\uff15", "1e3", " 5", "9" * 5000],
    ids=["superscript", "arabic-indic", "fullwidth", "exponent", "space", "5000-digits"],
)
async def test_api_limit_in_anything_but_ascii_digits_is_400(api, limit):
    resp = await api.get("/api/v1/recordings", params={"limit": limit})
    assert resp.status == 400
    assert "limit" in (await resp.json())["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000,
        b'{"a":' * 5000,
        b'{"phone": "+46701234567", "reason": NaN}',
        b'{"phone": Infinity, "reason": "x"}',
        b"\xff\xfe",
    ],
    ids=["brackets", "braces", "nan", "infinity", "not-utf8"],
)
async def test_api_body_nested_or_not_json_is_400(api, body):
    resp = await api.post(
        "/api/v1/subject/erase", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400


async def test_api_body_over_its_bound_is_413_by_length_or_as_read(api):
    from ivr.api.routes import MAX_BODY_BYTES

    reason = "x" * MAX_BODY_BYTES
    body = json.dumps({"phone": "+46701234567", "reason": reason}).encode()
    resp = await api.post(
        "/api/v1/subject/erase", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "larger than" in (await resp.json())["error"]

    async def chunks():  # no Content-Length: refused as read
        for _ in range(4):
            yield b" " * (MAX_BODY_BYTES // 2)

    resp = await api.post(
        "/api/v1/subject/erase", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    # Just under the bound, the same kind of body is read and judged on what it says.
    body = json.dumps({"phone": "+46701234567", "reason": "x" * 1000}).encode()
    resp = await api.post(
        "/api/v1/subject/erase", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status != 413
