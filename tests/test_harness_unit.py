"""The simulated Twilio (``ivr.harness``) against a fake minimal service written here.

The fake service is a real aiohttp server on localhost (``TestServer``); it checks what the
harness sends (signatures, the ``connected``/``start`` messages, sequence numbers, timestamps)
and records it for the assertions. Every call runs in fast mode, so there are no real-time
waits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import io
import json
import math
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr.cli.simulate import (
    add_simulate_parser,
    format_entry,
    options_from_args,
    parse_press,
    run_simulate,
    run_simulate_async,
    summary_line,
)
from ivr.harness import audio as harness_audio
from ivr.harness.twilio_sim import (
    CallOptions,
    CallResult,
    RealTimePacer,
    VirtualPacer,
    _Call,
    _Stream,
    simulate_call,
)
from ivr.harness.twilio_wire import DEMO_AUTH_TOKEN, Inbox
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, is_valid_signature
from media.g711 import ulaw_decode
from media.wavfile import write_wav

TOKEN = "test-auth-token"
PROMPT_BYTES = 8000  # one second of μ-law
AGENT = "+15550100002"


# -- the fake service ---------------------------------------------------------------------------
@dataclass
class StreamLog:
    """What one websocket handler saw."""

    path: str
    query: str
    signature_ok: bool
    connected: dict[str, Any] | None = None
    start: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    dtmf: list[tuple[str, int | None]] = field(default_factory=list)  # digit, last media ts
    mark_echoes: list[tuple[str, int | None]] = field(default_factory=list)
    stopped: bool = False

    def media(self, track: str | None = None) -> list[dict[str, Any]]:
        return [
            m["media"]
            for m in self.messages
            if m["event"] == "media" and (track is None or m["media"]["track"] == track)
        ]


class FakeService:
    """A minimal service with Twilio's contract: /twilio/voice, /continue, /status, websockets."""

    def __init__(self) -> None:
        self.base = ""
        self.voice_twiml: str | None = None  # None: the consent flow (Connect + Redirect)
        self.voice_status = 200
        self.voice_content_type = "text/xml"
        self.refuse_stream = False
        self.clear_on_dtmf = False
        self.prompt_bytes = PROMPT_BYTES
        self.webhooks: list[tuple[str, dict[str, str], bool]] = []  # path, form, signature ok
        self.streams: list[StreamLog] = []
        self.errors: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_post("/twilio/continue", self.cont)
        app.router.add_post("/twilio/status", self.status)
        app.router.add_get("/media", self.media)
        app.router.add_get("/uni", self.media)
        return app

    @property
    def ws_base(self) -> str:
        return self.base.replace("http://", "ws://")

    @staticmethod
    def stream_token(call_sid: str) -> str:
        return hmac.new(b"stream-key", call_sid.encode(), hashlib.sha256).hexdigest()[:16]

    async def _form(self, request: web.Request) -> tuple[dict[str, str], bool]:
        form = {k: str(v) for k, v in (await request.post()).items()}
        ok = is_valid_signature(
            TOKEN, str(request.url), form, request.headers.get(SIGNATURE_HEADER)
        )
        self.webhooks.append((request.path, form, ok))
        return form, ok

    async def voice(self, request: web.Request) -> web.Response:
        form, ok = await self._form(request)
        if not ok:
            return web.Response(status=403, text="bad signature")
        if self.voice_status != 200:
            return web.Response(status=self.voice_status, text="nope")
        twiml = self.voice_twiml
        if twiml is None:
            token = self.stream_token(form["CallSid"])
            twiml = (
                "<Response><Connect>"
                f'<Stream url="{self.ws_base}/media?dropped=yes">'
                f'<Parameter name="token" value="{token}"/>'
                '<Parameter name="lang" value="sv"/>'
                "</Stream></Connect>"
                '<Redirect method="POST">/twilio/continue</Redirect></Response>'
            )
        return web.Response(text=twiml, content_type=self.voice_content_type)

    async def cont(self, request: web.Request) -> web.Response:
        _, ok = await self._form(request)
        if not ok:
            return web.Response(status=403)
        twiml = (
            "<Response><Start>"
            f'<Stream url="{self.ws_base}/uni" track="both_tracks" name="recorder"/>'
            f"</Start><Dial>{AGENT}</Dial></Response>"
        )
        return web.Response(text=twiml, content_type="text/xml")

    async def status(self, request: web.Request) -> web.Response:
        _, ok = await self._form(request)
        if not ok:
            return web.Response(status=403)
        frames = sum(len(s.media()) for s in self.streams)
        return web.json_response(
            {
                "call_id": "call_1",
                "decision": "accepted",
                "recording_id": "rec_1",
                "recording_status": "complete",
                "lawful_basis": "consent",
                "frames_stored": frames,
            }
        )

    def check(self, condition: bool, what: str) -> None:
        if not condition:
            self.errors.append(what)

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        # Twilio signs the upgrade over the ws(s):// URL it opened, with no parameters.
        ws_url = str(request.url.with_query(None).with_scheme("ws"))
        log = StreamLog(
            path=request.path,
            query=request.query_string,
            signature_ok=is_valid_signature(
                TOKEN, ws_url, {}, request.headers.get(SIGNATURE_HEADER)
            ),
        )
        self.streams.append(log)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        log.connected = await ws.receive_json()
        start = await ws.receive_json()
        log.start = start
        self.check(start.get("event") == "start", "second message is start")
        self.check(start.get("sequenceNumber") == "1", "start has sequenceNumber 1")
        body = start.get("start", {})
        sid = start.get("streamSid", "")
        self.check(re.fullmatch(r"MZ[0-9a-f]{32}", sid) is not None, "streamSid MZ+32 hex")
        self.check(body.get("streamSid") == sid, "start.streamSid matches")
        bidirectional = request.path == "/media"
        if bidirectional:
            params = body.get("customParameters", {})
            if self.refuse_stream or params.get("token") != self.stream_token(body["callSid"]):
                await ws.close(code=1008, message=b"bad stream token")
                return ws
            prompt = bytes([0x7F]) * self.prompt_bytes
            for i in range(0, len(prompt), 3000):  # odd-sized chunks: any size is allowed
                payload = base64.b64encode(prompt[i : i + 3000]).decode()
                await ws.send_json(
                    {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                )
            await ws.send_json({"event": "mark", "streamSid": sid, "mark": {"name": "prompt-1"}})
        last_ts: int | None = None
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            log.messages.append(m)
            event = m["event"]
            if event == "media":
                last_ts = int(m["media"]["timestamp"])
            elif event == "dtmf":
                log.dtmf.append((m["dtmf"]["digit"], last_ts))
                if self.clear_on_dtmf:
                    await ws.send_json({"event": "clear", "streamSid": sid})
            elif event == "mark":
                log.mark_echoes.append((m["mark"]["name"], last_ts))
                await ws.close()  # normal closure: Twilio goes on with the next verb
                break
            elif event == "stop":
                log.stopped = True
                break
        return ws


@pytest.fixture
async def fake() -> AsyncIterator[FakeService]:
    service = FakeService()
    server = TestServer(service.app())
    await server.start_server()
    service.base = str(server.make_url("")).rstrip("/")
    try:
        yield service
    finally:
        await server.close()


def options(service: FakeService, **kw: Any) -> CallOptions:
    kw.setdefault("auth_token", TOKEN)
    kw.setdefault("fast", True)
    return CallOptions(url=service.base, **kw)


def lines(result: CallResult) -> list[str]:
    return [e.text for e in result.transcript]


def has_line(result: CallResult, pattern: str) -> bool:
    return any(re.search(pattern, text) for text in lines(result))


def check_sequence(log: StreamLog) -> None:
    """sequenceNumber counts every message from 1; chunks count per track; timestamps step 20."""
    seqs = [int(log.start["sequenceNumber"])] + [int(m["sequenceNumber"]) for m in log.messages]
    assert seqs == list(range(1, len(seqs) + 1))
    for track in ("inbound", "outbound"):
        media = log.media(track)
        assert [int(m["chunk"]) for m in media] == list(range(1, len(media) + 1))
        assert [int(m["timestamp"]) for m in media] == [20 * i for i in range(len(media))]
        for m in media:
            assert isinstance(m["timestamp"], str) and isinstance(m["chunk"], str)
            assert len(base64.b64decode(m["payload"])) == 160


# -- calls --------------------------------------------------------------------------------------
async def test_fast_call_end_to_end(fake: FakeService) -> None:
    result = await simulate_call(options(fake, presses=[(0.5, "1")], duration=2.0))

    assert fake.errors == []
    assert result.error is None, lines(result)
    # The status answer passes through.
    assert (result.decision, result.recording_id, result.lawful_basis) == (
        "accepted",
        "rec_1",
        "consent",
    )
    assert result.recording_status == "complete"
    assert result.status_response is not None and result.status_response["call_id"] == "call_1"

    bidi, uni = fake.streams
    # connected, then start with everything Twilio puts there.
    assert bidi.connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = bidi.start["start"]
    assert start["callSid"] == result.call_sid
    assert re.fullmatch(r"AC[0-9a-f]{32}", start["accountSid"])
    assert start["tracks"] == ["inbound"]
    assert start["customParameters"] == {
        "token": FakeService.stream_token(result.call_sid),
        "lang": "sv",
    }
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert bidi.query == ""  # Twilio drops the stream URL's query string
    assert has_line(result, r"query string \?dropped=yes dropped")
    check_sequence(bidi)

    # The press went out after the frames up to 0.5 s of call time...
    assert [d for d, _ in bidi.dtmf] == ["1"]
    assert abs(bidi.dtmf[0][1] + 20 - 500) <= 20
    dtmf_msg = next(m for m in bidi.messages if m["event"] == "dtmf")
    assert dtmf_msg["dtmf"] == {"track": "inbound_track", "digit": "1"}
    assert dtmf_msg["streamSid"] == bidi.start["streamSid"]
    # ...and the mark echo once the one-second prompt had played, i.e. after the frames
    # reaching 1 s of timestamps, and nothing after it: the server closed.
    assert bidi.mark_echoes == [("prompt-1", 980)]
    assert bidi.messages[-1]["event"] == "mark"
    assert not bidi.stopped
    assert result.closed_by_server == [1000]
    assert result.prompt_ms_received == 1000
    assert result.first_prompt_frame_latency_ms is not None
    assert (result.marks_echoed, result.dtmf_sent) == (1, 1)

    # After the stream closed, Twilio followed the Redirect: Start/Stream both_tracks + Dial.
    assert uni.path == "/uni" and uni.start["start"]["tracks"] == ["inbound", "outbound"]
    assert uni.start["start"]["callSid"] == result.call_sid
    assert uni.stopped  # the call ended: stop, then close
    check_sequence(uni)
    assert len(uni.media("inbound")) == len(uni.media("outbound")) == 100  # 2 s each
    # Inbound is the caller's tone, outbound the agent's: different audio.
    assert uni.media("inbound")[0]["payload"] != uni.media("outbound")[0]["payload"]
    assert not any(m["event"] == "dtmf" for m in uni.messages)
    assert result.frames_sent == {"inbound": 50 + 100, "outbound": 100}

    # Webhooks: voice, continue, status; all signed; the same call parameters each time.
    assert [path for path, _, _ in fake.webhooks] == [
        "/twilio/voice",
        "/twilio/continue",
        "/twilio/status",
    ]
    assert all(ok for _, _, ok in fake.webhooks)
    voice, cont, status = (form for _, form, _ in fake.webhooks)
    assert re.fullmatch(r"CA[0-9a-f]{32}", voice["CallSid"]) and voice["CallSid"] == result.call_sid
    assert voice["From"] == voice["Caller"] == "+46701234567"
    assert voice["To"] == voice["Called"] == "+15550100001"
    assert (voice["CallStatus"], voice["ApiVersion"], voice["Direction"]) == (
        "ringing",
        "2010-04-01",
        "inbound",
    )
    assert cont == voice
    assert status["CallStatus"] == "completed"
    assert status["CallDuration"] == "3"  # 1 s of prompt + 2 s with the agent
    assert {k: v for k, v in status.items() if k not in ("CallStatus", "CallDuration")} == {
        k: v for k, v in voice.items() if k != "CallStatus"
    }
    assert len(result.webhook_latency_ms) == 3 and len(result.twiml) == 2
    assert math.isclose(result.duration, 3.0)

    text = lines(result)
    assert text[-1] == "call ended after 3.0 s"
    assert "← prompt audio 1.00 s" in text
    assert "→ pressed 1" in text and "→ mark echoed prompt-1" in text
    assert "server closed stream (1000)" in text
    assert f"← TwiML: Start/Stream both_tracks + Dial {AGENT}" in text
    # Transcript times are call times, in order.
    times = [e.t for e in result.transcript]
    assert times == sorted(times)
    assert next(e.t for e in result.transcript if e.text == "→ pressed 1") == 0.5
    assert next(e.t for e in result.transcript if e.text.startswith("→ mark echoed")) == 1.0


async def test_webhooks_and_stream_upgrades_are_signed(fake: FakeService) -> None:
    result = await simulate_call(options(fake, duration=0.1))
    assert result.error is None
    assert len(fake.webhooks) == 3 and all(ok for _, _, ok in fake.webhooks)
    assert [s.signature_ok for s in fake.streams] == [True, True]


async def test_wrong_auth_token_gets_403_and_an_error_result(fake: FakeService) -> None:
    result = await simulate_call(options(fake, auth_token="not-the-token"))
    assert result.error is not None and "HTTP 403" in result.error
    assert "/twilio/voice" in result.error
    assert has_line(result, r"^error: .*HTTP 403")
    assert fake.streams == [] and result.twiml == []
    # The server rejected the signature, so it was invalid for its token.
    assert [ok for _, _, ok in fake.webhooks] == [False, False]  # voice, then status


async def test_say_then_hangup(fake: FakeService) -> None:
    fake.voice_twiml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Response><Say language="en-GB">This call may be recorded.</Say><Play>https://x/a.wav</Play>'
        "<Hangup/><Say>never said</Say></Response>"
    )
    result = await simulate_call(options(fake))
    assert result.error is None
    text = lines(result)
    assert '← Say "This call may be recorded."' in text
    assert "← Hangup" in text
    assert '← Say "never said"' not in text
    assert fake.streams == []
    assert fake.webhooks[-1][1]["CallDuration"] == "0"
    assert result.decision == "accepted"


async def test_dial_only(fake: FakeService) -> None:
    fake.voice_twiml = f"<Response><Dial><Number>{AGENT}</Number></Dial></Response>"
    result = await simulate_call(options(fake, duration=4.0))
    assert result.error is None
    assert f"← TwiML: Dial {AGENT}" in lines(result)
    assert has_line(result, rf"agent {re.escape(AGENT)} answers")
    assert fake.webhooks[-1][1]["CallDuration"] == "4"
    assert math.isclose(result.duration, 4.0)
    assert result.frames_sent == {}


async def test_pause_takes_call_time(fake: FakeService) -> None:
    fake.voice_twiml = '<Response><Pause length="2"/><Reject/></Response>'
    result = await simulate_call(options(fake))
    assert result.error is None and math.isclose(result.duration, 2.0)
    assert "← Reject" in lines(result)


async def test_hangup_during_the_prompt(fake: FakeService) -> None:
    result = await simulate_call(options(fake, hangup_at=0.4))
    assert result.error is None
    (bidi,) = fake.streams  # the Redirect was never followed
    assert bidi.stopped
    stop = bidi.messages[-1]
    assert stop["event"] == "stop" and stop["streamSid"] == bidi.start["streamSid"]
    assert stop["stop"] == {
        "accountSid": bidi.start["start"]["accountSid"],
        "callSid": result.call_sid,
    }
    assert bidi.mark_echoes == [] and result.marks_echoed == 0
    assert len(bidi.media()) == 20  # 0.4 s
    check_sequence(bidi)
    assert result.closed_by_server == []
    assert "→ caller hangs up" in lines(result)
    assert [p for p, _, _ in fake.webhooks] == ["/twilio/voice", "/twilio/status"]
    assert math.isclose(result.duration, 0.4)


async def test_server_refusing_the_stream_with_1008_is_recorded(fake: FakeService) -> None:
    fake.refuse_stream = True
    result = await simulate_call(options(fake, duration=0.2))
    assert result.closed_by_server == [1008]
    assert has_line(result, r"server refused stream .*\(1008: bad stream token\)")
    # Twilio goes on with the next verb after </Connect>.
    assert [p for p, _, _ in fake.webhooks][:2] == ["/twilio/voice", "/twilio/continue"]
    assert result.error is None
    assert result.prompt_ms_received == 0 and result.first_prompt_frame_latency_ms is None


async def test_clear_echoes_pending_marks_at_once(fake: FakeService) -> None:
    fake.clear_on_dtmf = True
    fake.prompt_bytes = 2 * PROMPT_BYTES
    result = await simulate_call(options(fake, presses=[(0.7, "2")], duration=0.1))
    assert result.error is None
    bidi = fake.streams[0]
    assert bidi.dtmf == [("2", 680)]
    # The mark of the 2 s prompt comes back at the press, not at 2 s.
    assert bidi.mark_echoes == [("prompt-1", 680)]
    assert has_line(result, r"← clear \(dropped 1\.30 s")


async def test_press_outside_a_bidirectional_stream_is_not_delivered(fake: FakeService) -> None:
    fake.voice_twiml = (
        f'<Response><Start><Stream url="{fake.ws_base}/uni"/></Start><Dial>{AGENT}</Dial>'
        "</Response>"
    )
    result = await simulate_call(options(fake, presses=[(0.2, "5")], duration=0.5))
    assert result.error is None
    assert result.dtmf_sent == 0
    assert "→ pressed 5 (no bidirectional stream: not delivered)" in lines(result)
    (uni,) = fake.streams
    assert uni.start["start"]["tracks"] == ["inbound"]  # inbound_track is the default
    assert result.frames_sent == {"inbound": 25}


async def test_bad_twiml_is_an_error(fake: FakeService) -> None:
    fake.voice_twiml = "<Response><Say>unclosed</Response>"
    result = await simulate_call(options(fake))
    assert result.error is not None and result.error.startswith("bad TwiML")
    assert has_line(result, "^error: bad TwiML")
    assert result.twiml == ["<Response><Say>unclosed</Response>"]


async def test_non_xml_answer_is_an_error(fake: FakeService) -> None:
    fake.voice_twiml = "<Response/>"
    fake.voice_content_type = "application/json"
    result = await simulate_call(options(fake))
    assert result.error is not None and "not TwiML" in result.error


async def test_http_500_is_an_error(fake: FakeService) -> None:
    fake.voice_status = 500
    result = await simulate_call(options(fake))
    assert result.error is not None and "HTTP 500" in result.error
    assert result.decision == "accepted"  # the status callback still went out


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_is_an_error() -> None:
    url = f"http://127.0.0.1:{_unused_port()}"
    result = await asyncio.wait_for(simulate_call(CallOptions(url=url, fast=True)), 10)
    assert result.error is not None and "cannot connect" in result.error
    assert has_line(result, "^error: ")
    assert result.status_response is None


async def test_stream_handshake_refused_is_an_error(fake: FakeService) -> None:
    fake.voice_twiml = (
        f'<Response><Connect><Stream url="{fake.ws_base}/nowhere"/></Connect></Response>'
    )
    result = await simulate_call(options(fake))
    assert result.error is not None and "handshake refused (HTTP 404)" in result.error


async def test_server_that_never_closes_hits_the_call_cap(fake: FakeService) -> None:
    fake.voice_twiml = f'<Response><Connect><Stream url="{fake.ws_base}/uni"/></Connect></Response>'
    result = await simulate_call(options(fake, max_call_seconds=3.0))
    assert result.error is None
    assert has_line(result, r"maximum call length \(3 s\)")
    assert fake.streams[0].stopped and len(fake.streams[0].media()) == 150


async def test_a_failing_stream_status_callback_is_an_error_the_call_survives(
    fake: FakeService,
) -> None:
    fake.voice_twiml = (
        f'<Response><Start><Stream url="{fake.ws_base}/uni" statusCallback="{fake.base}/gone"/>'
        f"</Start><Dial>{AGENT}</Dial></Response>"
    )
    result = await simulate_call(options(fake, duration=0.2))
    assert result.error is not None and "stream status callback" in result.error
    assert "HTTP 404" in result.error
    assert has_line(result, rf"agent {re.escape(AGENT)} answers")  # as Twilio, it goes on
    assert len(fake.streams[0].media("inbound")) == 10


@pytest.mark.parametrize("twiml", ['<Pause length="-1"/>', '<Record maxLength="x"/>'])
async def test_bad_verb_attributes_are_bad_twiml(fake: FakeService, twiml: str) -> None:
    fake.voice_twiml = f"<Response>{twiml}</Response>"
    result = await simulate_call(options(fake))
    assert result.error is not None and result.error.startswith("bad TwiML: <")


@pytest.mark.parametrize(
    "bad",
    [
        {"presses": [(1.0, "x")]},
        {"presses": [(-1.0, "1")]},
        {"hangup_at": math.nan},
        {"duration": -1.0},
        {"sync_frames": 0},
    ],
)
def test_call_options_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CallOptions(url="http://unused", **bad)


async def test_session_can_be_shared(fake: FakeService) -> None:
    fake.voice_twiml = "<Response><Hangup/></Response>"
    async with aiohttp.ClientSession() as session:
        first = await simulate_call(options(fake), session)
        second = await simulate_call(options(fake), session)
        assert not session.closed
    assert first.error is None and second.error is None
    assert first.call_sid != second.call_sid


# -- the real-time pacer, on a fake clock -------------------------------------------------------
class FakeClock:
    def __init__(self, overshoot: float = 0.0) -> None:
        self.t = 100.0
        self.overshoot = overshoot
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.t += delay + self.overshoot  # every wake-up is late
        await asyncio.sleep(0)


class RecordingWS:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, dict[str, Any]]] = []

    def send_text(self, data: bytes) -> None:
        self.sent.append((self.clock.t, json.loads(data)))

    async def receive(self) -> tuple[int, bytes]:
        await asyncio.Event().wait()  # the service never answers
        raise AssertionError


async def test_real_time_pacing_does_not_drift() -> None:
    clock = FakeClock(overshoot=0.007)
    pacer = RealTimePacer(time_fn=clock.time, sleep_fn=clock.sleep)
    result = CallResult(call_sid="CA" + "0" * 32)
    async with aiohttp.ClientSession() as session:
        call = _Call(CallOptions(url="http://unused"), session, pacer, result)
        pacer.start()
        clock.t += 0.013  # the stream starts at an odd call time
        ws = RecordingWS(clock)
        stream = _Stream(
            ws=ws,  # type: ignore[arg-type]
            sid="MZ" + "0" * 32,
            name=None,
            tracks=["inbound"],
            bidirectional=False,
            start_t=pacer.now(),
            inbox=Inbox(ws),  # type: ignore[arg-type]
        )
        call.streams.append(stream)
        await call.run_until(deadline=2.013)
        stream.inbox.cancel()
    sent_at = [t - 100.0 for t, _ in ws.sent]
    assert len(sent_at) == 100
    assert [m["media"]["timestamp"] for _, m in ws.sent] == [str(20 * i) for i in range(100)]
    for n, t in enumerate(sent_at):
        ideal = 0.013 + (n + 1) * 0.02
        # Each frame is at most one wake-up late, however many came before: no accumulation.
        assert ideal - 1e-9 <= t <= ideal + 0.007 + 1e-9
    assert all(s <= 0.02 + 1e-9 for s in clock.sleeps)


async def test_real_time_wait_returns_early_when_woken() -> None:
    clock = FakeClock()
    slept = asyncio.Event()

    async def never(delay: float) -> None:
        slept.set()
        await asyncio.Event().wait()

    pacer = RealTimePacer(time_fn=clock.time, sleep_fn=never)
    pacer.start()
    wake = asyncio.Event()
    waiting = asyncio.create_task(pacer.wait_until(5.0, wake))
    await slept.wait()
    wake.set()
    await asyncio.wait_for(waiting, 1)
    await pacer.wait_until(0.0, asyncio.Event())  # past: returns at once


async def test_virtual_pacer_only_moves_forward() -> None:
    pacer = VirtualPacer()
    pacer.start()
    await pacer.wait_until(1.5, asyncio.Event())
    await pacer.wait_until(1.0, asyncio.Event())
    assert pacer.now() == 1.5 and pacer.fast


# -- audio --------------------------------------------------------------------------------------
def test_tone_frames_loop_at_the_requested_level() -> None:
    source = harness_audio.tone(440, -12)
    assert len(source) == 50 and source.seconds == 1.0
    assert source.frame(0) == source.frame(50) and source.frame(-1) == source.frame(49)
    assert base64.b64decode(source.payload(7)) == source.frame(7)
    pcm = np.concatenate([ulaw_decode(source.frame(i)) for i in range(50)]).astype(float)
    peak_dbfs = 20 * math.log10(np.abs(pcm).max() / 32768)
    assert -12.5 < peak_dbfs < -11.5
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin = Hz
    with pytest.raises(ValueError):
        harness_audio.tone(5000)


def test_audio_file_becomes_8khz_ulaw_frames(tmp_path: Any) -> None:
    path = tmp_path / "caller.wav"
    t = np.arange(16000 * 3 // 10) / 16000  # 0.3 s at 16 kHz, stereo
    left = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    write_wav(path, np.stack([left, left], axis=1), 16000)
    source = harness_audio.from_file(path)
    assert len(source) == 15 and all(len(source.frame(i)) == 160 for i in range(15))


async def test_unreadable_audio_file_is_an_error_before_calling(tmp_path: Any) -> None:
    result = await simulate_call(CallOptions(url="http://unused", audio=tmp_path / "none.wav"))
    assert result.error is not None and "no such file" in result.error
    assert result.twiml == []


async def test_caller_audio_file_is_streamed(fake: FakeService, tmp_path: Any) -> None:
    path = tmp_path / "caller.wav"
    write_wav(path, np.full(800, 1000, dtype=np.int16), 8000)  # 0.1 s = 5 frames, looped
    result = await simulate_call(options(fake, audio=path, duration=0.1))
    assert result.error is None
    payloads = [m["payload"] for m in fake.streams[0].media()]
    assert payloads[:5] == payloads[5:10]


# -- the command line ---------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivr")
    add_simulate_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1@2.5", (2.5, "1")), ("#@0", (0.0, "#")), ("*@10", (10.0, "*")), ("D@0.02", (0.02, "D"))],
)
def test_press_parser_accepts(text: str, expected: tuple[float, str]) -> None:
    assert parse_press(text) == expected
    args = parser().parse_args(["simulate", "--press", text, "--press", "9@1"])
    assert args.press == [expected, (1.0, "9")]


@pytest.mark.parametrize(
    "text", ["1", "1@", "@2", "x@1", "12@1", "a@1", "1@-1", "1@abc", "1@nan", "1@inf", "1 @2", ""]
)
def test_press_parser_rejects(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_press(text)
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["simulate", "--press", text])
    assert exc.value.code == 2
    assert "--press" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--hangup-at", "-1"],
        ["--duration", "x"],
        ["--url", "ftp://host"],
        ["--max-call-seconds", "0"],
        ["--node", "ws://host:1"],
    ],
)
def test_other_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["simulate", *argv])
    assert exc.value.code == 2


def test_cli_defaults_and_auth_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parser().parse_args(["simulate"])
    assert args.func is run_simulate
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    opts = options_from_args(args)
    assert (opts.url, opts.auth_token, opts.fast, opts.duration) == (
        "http://127.0.0.1:8080",
        DEMO_AUTH_TOKEN,
        False,
        5.0,
    )
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    assert options_from_args(args).auth_token == "from-env"
    args = parser().parse_args(["simulate", "--auth-token", "given", "--from", "+1", "--fast"])
    opts = options_from_args(args)
    assert (opts.auth_token, opts.from_, opts.fast, opts.nodes) == ("given", "+1", True, ())
    args = parser().parse_args(["simulate", "--node", "http://a:1/", "--node", "https://b:2"])
    assert options_from_args(args).nodes == ("http://a:1", "https://b:2")


async def test_cli_prints_a_transcript(fake: FakeService) -> None:
    argv = ["simulate", "--url", fake.base, "--fast", "--quiet-ms", "10"]  # accepted, unused
    argv += ["--auth-token", TOKEN, "--press", "1@0.5", "--duration", "1"]
    out = io.StringIO()
    assert await run_simulate_async(parser().parse_args(argv), out) == 0
    text = out.getvalue().splitlines()
    assert "   +0.50s  → pressed 1" in text
    assert "   +1.00s  server closed stream (1000)" in text
    assert text[-2] == "   +2.00s  call ended after 2.0 s"
    assert text[-1] == "decision: accepted · recording rec_1 (complete) · lawful basis consent"


async def test_cli_json_output_and_failure_exit(fake: FakeService) -> None:
    argv = ["simulate", "--url", fake.base, "--fast", "--json", "--auth-token", TOKEN]
    out = io.StringIO()
    assert await run_simulate_async(parser().parse_args([*argv, "--duration", "0.2"]), out) == 0
    data = json.loads(out.getvalue())
    assert set(data) == {
        "call_sid",
        "decision",
        "recording_id",
        "lawful_basis",
        "recording_status",
        "prompt_ms",
        "transcript",
        "error",
    }
    assert data["decision"] == "accepted" and data["prompt_ms"] == 1000 and data["error"] is None
    assert data["transcript"][0]["t"] == 0.0

    fake.voice_status = 403
    out = io.StringIO()
    assert await run_simulate_async(parser().parse_args(argv), out) == 1
    assert "HTTP 403" in json.loads(out.getvalue())["error"]


def test_run_simulate_exits_1_when_the_service_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_unused_port()}"
    args = parser().parse_args(["simulate", "--url", url, "--fast"])
    assert run_simulate(args) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "cannot connect" in out


def test_summary_and_entry_formatting() -> None:
    result = CallResult(call_sid="CA1", status_response={"decision": "refused"})
    assert summary_line(result) == "decision: refused · no recording · lawful basis -"
    assert summary_line(CallResult(call_sid="CA1")) == "no outcome reported by the service"
    from ivr.harness.twilio_sim import TranscriptEntry

    assert format_entry(TranscriptEntry(12.345, "x")) == "  +12.35s  x"
