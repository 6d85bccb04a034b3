"""Twilio's side of the wire, for ``ivr simulate`` and ``ivr loadtest``.

The signed form webhooks, the Media Streams messages Twilio sends (built as bytes, media from a
template so a frame costs one ``%``), reading what the service sends back, and the handshake that
replaces waiting in virtual time (``Inbox.sync``).

Like the rest of the harness it never imports the service: it speaks HTTP and websockets only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ivr.harness.wsclient import OP_CLOSE, OP_PONG, OP_TEXT, RawWebSocket, WebSocketError
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature

DEMO_AUTH_TOKEN = "demo-auth-token-not-secret"  # the embedded demo configuration's token
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"  # a local ``ivr serve``
DEFAULT_TO = "+15550100001"
DEFAULT_FROM = "+46701234567"
OPT_IN_LINES = frozenset({"+15550100001", "+15550100005"})  # demo lines that ask for key 1
USER_AGENT = "TwilioProxy/1.1 (ivr-harness)"
BYTES_PER_SECOND = 8000  # 8 kHz μ-law: what a prompt's length is measured in

_MEDIA_TEMPLATE = (
    b'{"event":"media","sequenceNumber":"%d","streamSid":"@SID@","media":{"track":"@TRACK@",'
    b'"chunk":"%d","timestamp":"%d","payload":"%b"}}'
)
# What the service sends for every prompt frame: read without json.loads (it is the bulk).
_MEDIA_OUT = re.compile(
    rb'\{"event":"media","streamSid":"([^"]*)","media":\{"payload":"([A-Za-z0-9+/]*={0,2})"\}\}'
)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped id: ``CA``/``MZ``/``AC`` and 32 hex digits."""
    return prefix + secrets.token_hex(16)


# -- webhooks -------------------------------------------------------------------------------------
def call_form(call_sid: str, account_sid: str, to: str, from_: str) -> dict[str, str]:
    """The form parameters Twilio posts to the webhooks of a ringing inbound call."""
    return {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "Caller": from_,
        "Called": to,
        "CallStatus": "ringing",
        "ApiVersion": "2010-04-01",
        "Direction": "inbound",
    }


def signed_headers(token: str, url: str, params: Mapping[str, str]) -> dict[str, str]:
    """``X-Twilio-Signature`` over ``url`` and the form (``{}`` for GET and stream upgrades)."""
    return {SIGNATURE_HEADER: compute_signature(token, url, params), "User-Agent": USER_AGENT}


# -- Media Streams: what Twilio sends -----------------------------------------------------------
def _event(event: str, seq: int, stream_sid: str, body: Mapping[str, object]) -> bytes:
    message = {"event": event, "sequenceNumber": str(seq), "streamSid": stream_sid, event: body}
    return json.dumps(message, separators=(",", ":")).encode()


def connected() -> bytes:
    return b'{"event":"connected","protocol":"Call","version":"1.0.0"}'


def start(
    stream_sid: str, call_sid: str, account_sid: str, tracks: list[str], params: Mapping[str, str]
) -> bytes:
    """The ``start`` message; always sequence number 1."""
    body = {
        "accountSid": account_sid,
        "callSid": call_sid,
        "streamSid": stream_sid,
        "tracks": tracks,
        "customParameters": dict(params),
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return _event("start", 1, stream_sid, body)


def media_template(stream_sid: str, track: str) -> bytes:
    """A media message with its stream and track filled in; ``% (seq, chunk, ts, payload)``
    with the payload already base64."""
    return _MEDIA_TEMPLATE.replace(b"@SID@", stream_sid.encode()).replace(
        b"@TRACK@", track.encode()
    )


def dtmf(seq: int, stream_sid: str, digit: str) -> bytes:
    return _event("dtmf", seq, stream_sid, {"track": "inbound_track", "digit": digit})


def mark(seq: int, stream_sid: str, name: str) -> bytes:
    return _event("mark", seq, stream_sid, {"name": name})


def stop(seq: int, stream_sid: str, call_sid: str, account_sid: str) -> bytes:
    return _event("stop", seq, stream_sid, {"accountSid": account_sid, "callSid": call_sid})


# -- Media Streams: what the service sends -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerMessage:
    """One text message from the service, as far as Twilio cares."""

    event: str  # "media", "mark", "clear", anything else the service invented; "" if unreadable
    stream_sid: str | None = None
    audio_bytes: int = 0  # media: decoded payload length
    audio: bytes = b""  # media: the payload itself, when asked to keep it
    name: str = ""  # mark: its name
    problem: str | None = None  # why it is unusable (not JSON, bad base64, ...)


def read_server_message(data: bytes, *, keep_audio: bool = False) -> ServerMessage:
    match = _MEDIA_OUT.fullmatch(data)
    if match is not None and not keep_audio:  # the service's prompt frames: no parse, no decode
        sid, b64 = match.groups()
        if len(b64) % 4 == 0:
            size = len(b64) * 3 // 4 - b64[-2:].count(b"=")
            return ServerMessage("media", sid.decode(), audio_bytes=size)
    try:
        message = json.loads(data)
    except ValueError:
        return ServerMessage("", problem="a text frame that is not JSON")
    if not isinstance(message, dict):
        return ServerMessage("", problem="JSON that is not an object")
    event = message.get("event")
    event = event if isinstance(event, str) else ""
    sid = message.get("streamSid")
    body = message.get(event)
    body = body if isinstance(body, dict) else {}
    if event == "media":
        try:
            audio = base64.b64decode(str(body.get("payload", "")), validate=True)
        except (binascii.Error, ValueError):
            return ServerMessage(event, sid, problem="media with a bad base64 payload")
        return ServerMessage(event, sid, audio_bytes=len(audio), audio=audio if keep_audio else b"")
    if event == "mark":
        return ServerMessage(event, sid, name=str(body.get("name", "")))
    return ServerMessage(event, sid)


# -- the handshake ------------------------------------------------------------------------------
_PINGS = itertools.count(1)


class Inbox:
    """A stream's reader: every message the service sends, as ``(opcode, data)`` in order,
    until the socket closes.

    ``sync`` is how virtual time waits for the service without waiting for silence: it sends a
    websocket ping and returns what arrived before the pong. The service reacts to each message
    before it reads the next (``ivr.platforms.twilio.app`` writes its commands out inline) and
    aiohttp answers a ping when the handler reads it, so everything the service sent in reaction
    to what we sent before the ping is in front of the pong. A server that never answers pings
    cannot run in virtual time: ``sync`` then raises ``TimeoutError``.
    """

    def __init__(self, ws: RawWebSocket, wake: asyncio.Event | None = None) -> None:
        self.ws = ws
        self.messages: deque[tuple[int, bytes]] = deque()  # pongs included, as markers
        self.closed = False  # then ``ws.close_code``: the server's, None if the link dropped
        self.first_at: float | None = None  # time.perf_counter() of the first text message
        self._arrived = wake or asyncio.Event()  # set on every arrival (and cleared by sync)
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while (message := await self.ws.receive())[0] != OP_CLOSE:
                if self.first_at is None and message[0] == OP_TEXT:
                    self.first_at = time.perf_counter()
                self.messages.append(message)
                self._arrived.set()
        except (OSError, asyncio.IncompleteReadError, WebSocketError):
            pass  # the link dropped
        finally:
            self.closed = True
            self._arrived.set()

    def take(self) -> list[tuple[int, bytes]]:
        """Every message that has arrived (real time: they are applied as they come)."""
        out = [m for m in self.messages if m[0] != OP_PONG]
        self.messages.clear()
        return out

    async def sync(self, timeout: float) -> list[tuple[int, bytes]]:
        """Ping; the messages that came before the pong (or before the close)."""
        if self.closed or not self.ws.writable:
            return self.take()
        token = b"sync-%d" % next(_PINGS)
        self.ws.ping(token)
        out: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while True:
                while self.messages:
                    op, data = self.messages.popleft()
                    if op != OP_PONG:
                        out.append((op, data))
                    elif data == token:
                        return out
                if self.closed:
                    return out
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_closed(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, for the reader to see the close."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)

    def cancel(self) -> None:
        self._task.cancel()
