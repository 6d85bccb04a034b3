"""Fuzzers for the Twilio surfaces (issue 12, point 7): media-stream messages and webhook forms.

Inputs are real messages and forms mutated field by field (a number in Unicode digits, a jump,
NaN, a list, deep nesting, a field dropped or duplicated, the text cut or spliced, the body's
encoding broken), drawn by hypothesis from a fixed seed, ``robustness_inputs`` of each (300 in
the normal run, IVR_ROBUSTNESS_INPUTS=20000 in the long one). Whatever arrives: no HTTP 500, no
close 1011, nothing logged at ERROR or with a traceback, no recording longer than its line's
maximum, and a normal call afterwards records complete.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from ivr.config import DEMO_TWILIO_AUTH_TOKEN
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature
from ivr.service import VAULT
from tests.conftest import demo_service

MESSAGE_LINE = "+15550100005"  # recorded on the consent stream once "1" is pressed; 300 s max
CONSENT_LINE = "+15550100001"
MAX_RECORDING_MS = 300_000


class Errors(logging.Handler):
    """Every record at ERROR or with a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture
def errors():
    handler = Errors()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
async def service(tmp_path, monkeypatch, errors):
    async with demo_service(tmp_path / "var", monkeypatch) as (app, url, _):
        yield app, url
    assert not errors.records, "\n".join(f"{r.name}: {r.getMessage()}" for r in errors.records[:20])


def drawn(strategy: st.SearchStrategy[Any], n: int, at: int) -> list[Any]:
    """``n`` examples of ``strategy``, the same ones every run (seed ``at``)."""
    out: list[Any] = []

    @seed(at)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out[:n]


# -- hostile values -------------------------------------------------------------------------------
UNICODE_DIGITS = ["\u00b2", "\u0661\u0662", "\uff11\uff12", "\u09e7", "1\u00b2", "\U0001d7d9"]
NUMBERISH = st.one_of(
    st.sampled_from(UNICODE_DIGITS),
    st.sampled_from(["", "-1", "+1", " 1", "1 ", "1_000", "0x10", "1e3", "1.5", "0" * 13]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([99_999_999_999, 4_000_000_000, 2**31, 2**63, 10**12, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
HOSTILE = st.one_of(NUMBERISH, ANY_JSON, st.text(max_size=40))
PAYLOADS = st.one_of(
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["\u00ff" * 8, "@@@", "AAA", "====", "A" * 30_000, "\u00b2\u00b2=="]),
    st.text(max_size=30),
)


def _base(kind: str, seq: int, ts: int, token: str, call_sid: str) -> dict[str, Any]:
    sid = "MZ" + "0" * 32
    if kind == "media":
        payload = base64.b64encode(b"\x7f" * 160).decode()
        media = {"track": "inbound", "chunk": str(seq), "timestamp": str(ts), "payload": payload}
        return {"event": "media", "sequenceNumber": str(seq), "streamSid": sid, "media": media}
    if kind == "dtmf":
        return {"event": "dtmf", "sequenceNumber": str(seq), "dtmf": {"digit": "5"}}
    if kind == "mark":
        return {"event": "mark", "sequenceNumber": str(seq), "mark": {"name": "play-1"}}
    if kind == "start":
        return {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": sid,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "streamSid": sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    if kind == "stop":
        return {"event": "stop", "sequenceNumber": str(seq)}
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


# One mutation of a real message, as data: applied to the stream's next message when sent.
MUTATION = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(["sequenceNumber", "event"]), HOSTILE),
    st.tuples(
        st.just("media"), st.sampled_from(["timestamp", "chunk", "track", "payload"]), HOSTILE
    ),
    st.tuples(st.just("payload"), PAYLOADS, st.none()),
    st.tuples(st.just("jump"), st.sampled_from(["sequenceNumber", "timestamp"]), NUMBERISH),
    st.tuples(
        st.just("jump"),
        st.sampled_from(["sequenceNumber", "timestamp"]),
        st.one_of(
            st.integers(min_value=0, max_value=10**12 - 1).map(str),
            st.sampled_from(["99999999999", "4000000000", "0", "1"]),
        ),
    ),
    st.tuples(st.just("token"), st.one_of(st.text(max_size=80), HOSTILE), st.none()),
    st.tuples(
        st.just("drop"), st.sampled_from(["sequenceNumber", "media", "event", "start"]), st.none()
    ),
    st.tuples(st.just("nest"), st.integers(min_value=2, max_value=6000), st.sampled_from("[{")),
    st.tuples(st.just("constant"), st.sampled_from(["NaN", "Infinity", "-Infinity"]), st.none()),
    st.tuples(st.just("cut"), st.integers(min_value=0, max_value=400), st.none()),
    st.tuples(st.just("splice"), st.integers(min_value=0, max_value=400), st.text(max_size=8)),
    st.tuples(st.just("binary"), st.binary(max_size=50), st.none()),
    st.tuples(st.just("huge"), st.integers(min_value=60_000, max_value=70_000), st.none()),
)
STREAM_INPUT = st.tuples(
    st.sampled_from(["media", "media", "media", "dtmf", "mark", "start", "stop", "connected"]),
    MUTATION,
)


def mutated(kind: str, mutation: tuple[Any, Any, Any], base: dict[str, Any]) -> str | bytes:
    what, a, b = mutation
    message = base
    if what == "field":
        message[a] = b
    elif what == "media":
        message.setdefault("media", {})[a] = b
    elif what == "payload":
        message.setdefault("media", {})["payload"] = a
    elif what == "jump":
        if a == "timestamp":
            message.setdefault("media", {})["timestamp"] = b
        else:
            message["sequenceNumber"] = b
    elif what == "token":
        message.setdefault("start", {}).setdefault("customParameters", {})["token"] = a
    elif what == "drop":
        message.pop(a, None)
    elif what == "nest":
        opener, closer = (b, "]" if b == "[" else "}")
        inner = json.dumps(message)
        return (opener if opener == "[" else '{"a":') * a + inner + closer * a
    elif what == "constant":
        return json.dumps(message).replace('"sequenceNumber": "', f'"sequenceNumber": {a}, "x": "')
    text = json.dumps(message, allow_nan=True)
    if what == "cut":
        return text[:a]
    if what == "splice":
        return text[:a] + b + text[a:]
    if what == "binary":
        return a
    if what == "huge":
        return text + " " * a
    return text


# -- the harness ----------------------------------------------------------------------------------
def form(to: str, call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid or "CA" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": "+46701234567",
        "To": to,
        "CallStatus": "in-progress",
        "Direction": "inbound",
        **extra,
    }


async def signed_post(s, url, path, data, body: bytes | None = None, headers=None):
    sig = compute_signature(DEMO_TWILIO_AUTH_TOKEN, url + path, data)
    h = {SIGNATURE_HEADER: sig, "Content-Type": "application/x-www-form-urlencoded"}
    h.update(headers or {})
    return await s.post(url + path, data=body if body is not None else urlencode(data), headers=h)


class Stream:
    """A live consent stream on the message line, the caller having pressed 1."""

    def __init__(self) -> None:
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 3
        self.ts = 0
        self.token = ""
        self.call_sid = ""
        self.data: dict[str, str] = {}

    async def open(self, s, url) -> None:
        self.data = form(MESSAGE_LINE)
        resp = await signed_post(s, url, "/twilio/voice", self.data)
        stream = ET.fromstring(await resp.text()).find("Connect/Stream")
        self.token = stream.find("Parameter").get("value")
        self.call_sid = self.data["CallSid"]
        self.ws = await s.ws_connect(stream.get("url"), autoping=False, max_msg_size=0)
        await self.ws.send_str(json.dumps(_base("start", 1, 0, self.token, self.call_sid)))
        await self.ws.send_str(json.dumps(_base("dtmf", 2, 0, "", "")).replace('"5"', '"1"'))
        self.seq, self.ts = 3, 0

    async def send(self, text: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_str(text)

    async def sync(self) -> int | None:
        """Wait until the service has read everything sent; its close code if it closed."""
        assert self.ws is not None
        if self.ws.closed:
            return self.ws.close_code
        try:
            await self.ws.ping(b"sync")
        except (ConnectionError, RuntimeError):
            return await self.closed()
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.PONG:
                return None
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else self.ws.close_code
                await self.ws.close()
                return code
            if msg.type == aiohttp.WSMsgType.ERROR:
                return await self.closed()

    async def closed(self) -> int | None:
        assert self.ws is not None
        await self.ws.close()
        return self.ws.close_code

    async def finish(self, s, url) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        resp = await signed_post(s, url, "/twilio/status", {**self.data, "CallStatus": "completed"})
        assert resp.status == 200


async def test_stream_messages(service, robustness_inputs):
    app, url = service
    inputs = drawn(STREAM_INPUT, robustness_inputs, at=1207)
    closes: Counter[int | None] = Counter()
    async with aiohttp.ClientSession() as s:
        stream = Stream()
        await stream.open(s, url)
        for i, (kind, mutation) in enumerate(inputs):
            base = _base(kind, stream.seq, stream.ts, stream.token, stream.call_sid)
            await stream.send(mutated(kind, mutation, base))
            stream.seq += 1
            # Real media around the fuzzed message, so the recording is fed all along.
            for _ in range(2):
                stream.ts += 20
                await stream.send(json.dumps(_base("media", stream.seq, stream.ts, "", "")))
                stream.seq += 1
            if i % 10 == 9 or kind in ("stop", "start") or mutation[0] in ("huge", "nest"):
                code = await stream.sync()
                if code is not None:
                    closes[code] += 1
                    await stream.finish(s, url)
                    await stream.open(s, url)
        await stream.finish(s, url)
    assert 1011 not in closes, closes
    assert set(closes) <= {1000, 1002, 1007, 1008, 1009}, closes
    for row in app[VAULT].list():
        assert (row.duration_ms or 0) <= MAX_RECORDING_MS + 10_000, row
    await a_normal_call_records_complete(url)


async def a_normal_call_records_complete(url: str) -> None:
    result = await simulate_call(
        CallOptions(url=url, to=CONSENT_LINE, fast=True, presses=[(2.0, "1")], duration=3.0)
    )
    assert result.error is None and result.recording_status == "complete", result.transcript
    assert result.status_response["frames_lost"] == 0


# -- webhooks -------------------------------------------------------------------------------------
FIELDS = [
    "CallSid",
    "AccountSid",
    "From",
    "To",
    "CallStatus",
    "CallDuration",
    "StreamEvent",
    "StreamName",
    "StreamError",
    "Direction",
]
FORM_MUTATION = st.one_of(
    st.tuples(
        st.just("value"),
        st.sampled_from(FIELDS),
        st.one_of(st.text(max_size=60), NUMBERISH.map(str)),
    ),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("duplicate"), st.sampled_from(FIELDS), st.text(max_size=10)),
    st.tuples(st.just("raw"), st.binary(max_size=200), st.none()),
    st.tuples(st.just("splice"), st.integers(min_value=0, max_value=200), st.binary(max_size=6)),
    st.tuples(st.just("fields"), st.integers(min_value=50, max_value=3000), st.none()),
    st.tuples(st.just("size"), st.integers(min_value=60_000, max_value=200_000), st.none()),
    st.tuples(
        st.just("type"),
        st.sampled_from(
            ["multipart/form-data; boundary=x", "application/json", "text/plain", "", "x/\u00ff"]
        ),
        st.none(),
    ),
    st.tuples(
        st.just("signature"),
        st.one_of(st.text(max_size=80), st.sampled_from(["\u00e9\u00b2", "A" * 5000])),
        st.none(),
    ),
)
WEBHOOK_INPUT = st.tuples(
    st.sampled_from(
        ["/twilio/voice", "/twilio/continue", "/twilio/status", "/twilio/stream-status"]
    ),
    st.sampled_from([CONSENT_LINE, MESSAGE_LINE, "+15559999999"]),
    st.lists(FORM_MUTATION, min_size=1, max_size=3),
    st.booleans(),  # signed over what is sent (True) or not at all
)


async def send_webhook(s, url, path, to, mutations, sign) -> int:
    fields = list(
        form(to, StreamEvent="stream-error", StreamName="recording", CallStatus="completed").items()
    )
    body: bytes | None = None
    headers: dict[str, str] = {}
    signature: str | None = None
    for what, a, b in mutations:
        if what == "value":
            fields = [(k, v) for k, v in fields if k != a] + [(a, b)]
        elif what == "drop":
            fields = [(k, v) for k, v in fields if k != a]
        elif what == "duplicate":
            fields.append((a, b))
        elif what == "raw":
            body = a
        elif what == "splice":
            text = body if body is not None else urlencode(fields).encode()
            body = text[:a] + b + text[a:]
        elif what == "fields":
            fields += [(f"X{i}", "1") for i in range(a)]
        elif what == "size":
            fields.append(("Padding", "x" * a))
        elif what == "type":
            headers["Content-Type"] = a
        elif what == "signature":
            signature = a
    if body is None:
        body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields).encode()
    sig = (
        signature
        if signature is not None
        else (compute_signature(DEMO_TWILIO_AUTH_TOKEN, url + path, fields) if sign else "")
    )
    h = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    if sig:
        h[SIGNATURE_HEADER] = sig
    try:
        async with s.post(url + path, data=body, headers=h) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, UnicodeEncodeError, ValueError):
        return -1  # the client would not send it as given (a header it cannot encode)


async def test_webhook_forms(service, robustness_inputs):
    _, url = service
    inputs = drawn(WEBHOOK_INPUT, robustness_inputs, at=1208)
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as s:
        for path, to, mutations, sign in inputs:
            statuses[await send_webhook(s, url, path, to, mutations, sign)] += 1
    assert set(statuses) <= {-1, 200, 400, 403, 413}, statuses
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[413] > 0, statuses
    await a_normal_call_records_complete(url)
