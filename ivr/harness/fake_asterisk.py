"""A fake Asterisk 20 that speaks ARI and external-media RTP to a Stasis application.

For tests and for the developer harness (``ivr simulate --platform asterisk``). It serves, on
127.0.0.1, the parts of ARI the adapter uses, checks requests the way Asterisk does, and plays the
telephone side of each call: the caller's channel enters Stasis, its audio reaches the app as RTP
once the app bridges an external-media channel with it, and the app's RTP (our prompts) is
recorded. Wire facts follow ``PROTOCOLS.md`` §2 / §2.1; error messages are Asterisk's own.

REST (under ``/ari``; HTTP Basic auth or ``api_key=user:pass``; parameters in the query string,
a form body or a JSON body, JSON ``variables`` = channel variables):

=====================================  =========================================================
``GET /events?app=A[,B]``              events websocket (the newest socket for an app gets its
                                       events, the older one is sent ``ApplicationReplaced``)
``GET /asterisk/info``, ``/ping``      minimal system info
``GET|POST /channels``                 list; originate (``endpoint``, ``app``|``extension``,
                                       ``appArgs``, ``callerId``, ``timeout``, ``channelId``)
``POST /channels/externalMedia``       ``app``, ``external_host``, ``format`` (ulaw|alaw) ...
``GET|POST|DELETE /channels/{id}``     get; originate with id; hang up (``reason``|
                                       ``reason_code``)
``POST /channels/{id}/answer``         -> ``ChannelStateChange`` (state ``Up``)
``POST /channels/{id}/continue``       leaves Stasis (``StasisEnd``)
``POST /channels/{id}/play``           -> Playback; ``PlaybackStarted``/``PlaybackFinished``
``GET|POST /channels/{id}/variable``   get / set a channel variable
``GET|POST /bridges``                  list; create (``type``, ``bridgeId``, ``name``)
``GET|POST|DELETE /bridges/{id}``      get; create with id; destroy (``BridgeDestroyed``)
``POST /bridges/{id}/addChannel``      ``channel=a,b`` -> ``ChannelEnteredBridge``
``POST /bridges/{id}/removeChannel``   -> ``ChannelLeftBridge``
=====================================  =========================================================

Errors: 401 ``Authentication required``; 404 ``Resource not found`` (unknown path); 405
``Invalid method``; 400 for missing/invalid parameters; 404 ``Channel not found`` / ``Bridge not
found``; 409 ``Channel not in Stasis application``; ``addChannel`` answers 400 ``Channel not
found`` and 422 ``Channel not in Stasis application`` for the channels it is given (as Asterisk
does); 412 ``Channel in invalid state`` for playing to a channel that is still ``Down``. All error
bodies are ``{"message": ...}``.

Events: every event has ``type``, ``timestamp`` (``2026-11-28T12:00:00.000+0000``),
``asterisk_id`` and ``application``. Channels created by the app (external media, agents) raise
``StasisStart`` too, like Asterisk; an external-media channel does so only after the reply to
``POST /channels/externalMedia`` (``ChannelStateChange`` first), and ``addChannel`` refuses it
with 422 until then. An app-initiated ``DELETE`` emits ``ChannelHangupRequest`` (``soft:
true``), ``ChannelLeftBridge`` (if bridged), ``StasisEnd``, ``ChannelDestroyed``; a caller (a
channel that came in by ``Stasis()``) gets nothing after its ``StasisEnd``, as on Asterisk 22.
These rules are checked against a real Asterisk by tests/asterisk/test_fake_contract.py. Events
that happen while the app has no events socket are lost (kept in ``events_dropped``), but REST
keeps working.

Media: each external-media channel owns a UDP socket on 127.0.0.1 (its ``UNICASTRTP_LOCAL_*``
variables). While it is in a *mixing* bridge it carries the mix of every other member with a
voice (the caller, answered agents) as RTP (PT 0 for ulaw, 8 for alaw, 160-byte payloads, seq +1,
timestamp +160, one SSRC, marker on the first packet) to ``external_host``, from that same
socket. With ``pace=True`` (default) a packet goes out every 20 ms of wall time; with
``pace=False`` nothing is sent until the driver calls :meth:`FakeCall.send_audio`. Each voice has
a frame counter that advances only while it is mixed into a packet, so with one caller and an
agent that joined after ``k`` caller frames, packet ``n`` carries
``mix_frames([caller.frame(n), agent.frame(n - k)])``. Every datagram that reaches the socket is
recorded (arrival time, parsed header, payload, source).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import random
import re
import socket
import statistics
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import numpy as np
from aiohttp import WSMsgType, web
from multidict import MultiDict

from ivr.harness import audio as harness_audio
from media.g711 import alaw_encode, ulaw_decode, ulaw_encode

__all__ = [
    "DEFAULT_HANGUP_ORDER",
    "DTMF_EVENT_CODES",
    "FRAME_BYTES",
    "PT_PCMA",
    "PT_PCMU",
    "PT_TELEPHONE_EVENT",
    "BridgeState",
    "ChannelState",
    "FakeAsterisk",
    "FakeCall",
    "FrameSource",
    "ReceivedPacket",
    "RecordedRequest",
    "RtpHeader",
    "RtpPeer",
    "RtpStats",
    "build_rtp",
    "format_timestamp",
    "mix_frames",
    "parse_rtp",
    "telephone_event_payload",
]

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz G.711
SAMPLES_PER_FRAME = 160  # RTP timestamp units per 20 ms packet
FRAME_SECONDS = 0.020
PT_PCMU = 0
PT_PCMA = 8
PT_TELEPHONE_EVENT = 101
RTP_VERSION = 2

#: RFC 4733 event codes for the DTMF keys.
DTMF_EVENT_CODES: dict[str, int] = {
    **{str(d): d for d in range(10)},
    "*": 10,
    "#": 11,
    "A": 12,
    "B": 13,
    "C": 14,
    "D": 15,
}
#: What a caller's hang-up looks like by default (``PROTOCOLS.md`` §2: typical, not guaranteed).
DEFAULT_HANGUP_ORDER: tuple[str, ...] = ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed")
_HANGUP_EVENTS = frozenset(
    {"ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"}
)

# Q.850 cause texts as Asterisk's ast_cause2str gives them.
_CAUSE_TEXT: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format (addr incomplete)",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    58: "Bearer capability not available",
    127: "Interworking, unspecified",
}
# ``DELETE /channels/{id}?reason=`` names (resource_channels.c convert_reason_to_hangup_code).
_HANGUP_REASONS: dict[str, int] = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}
_BRIDGE_TYPES = frozenset(
    {"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"}
)
# Format names Asterisk knows; only the two G.711 laws are streamed by the fake.
_KNOWN_FORMATS = frozenset(
    {"ulaw", "alaw", "gsm", "g722", "g726", "g729", "ilbc", "opus", "speex", "lpc10", "adpcm"}
    | {"slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96", "slin192"}
)
_STREAMED_FORMATS = {"ulaw": PT_PCMU, "alaw": PT_PCMA}

CALLER = "caller"
EXTERNAL_MEDIA = "external_media"
AGENT = "agent"

Addr = tuple[str, int]


# -- RTP -------------------------------------------------------------------------------------------
class RtpHeader(NamedTuple):
    """The fixed RTP header (RFC 3550 §5.1)."""

    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int


class ReceivedPacket(NamedTuple):
    """One datagram that reached a fake RTP socket; ``header`` is None if it was not RTP."""

    arrival: float  # time.monotonic()
    header: RtpHeader | None
    payload: bytes


def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    marker: bool = False,
) -> bytes:
    """An RTP packet with a 12-byte header (no CSRCs, no extension, no padding)."""
    byte1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    header = struct.pack(
        "!BBHII", RTP_VERSION << 6, byte1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    return header + payload


def parse_rtp(data: bytes) -> tuple[RtpHeader, bytes] | None:
    """Header and payload of an RTP packet, or None if ``data`` is not a well-formed one."""
    if len(data) < 12:
        return None
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    version = b0 >> 6
    if version != RTP_VERSION:
        return None
    padding, extension, cc = bool(b0 & 0x20), bool(b0 & 0x10), b0 & 0x0F
    offset = 12 + 4 * cc
    if extension:
        if len(data) < offset + 4:
            return None
        (ext_words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * ext_words
    end = len(data)
    if padding:
        if end <= offset or data[-1] == 0 or data[-1] > end - offset:
            return None
        end -= data[-1]
    if offset > end:
        return None
    header = RtpHeader(version, padding, extension, cc, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc)
    return header, bytes(data[offset:end])


def telephone_event_payload(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """RFC 4733 payload: ``event u8 | E:1 R:1 volume:6 | duration u16``."""
    if not 0 <= event <= 255:
        raise ValueError(f"event must be 0..255, got {event}")
    if not 0 <= volume <= 63:
        raise ValueError(f"volume must be 0..63, got {volume}")
    if not 0 <= duration <= 0xFFFF:
        raise ValueError(f"duration must be 0..65535, got {duration}")
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def mix_frames(frames: Sequence[bytes], fmt: str = "ulaw") -> bytes:
    """What a mixing bridge sends: the sum of μ-law ``frames`` as linear PCM, clipped, in ``fmt``.

    One ``ulaw`` frame passes through untouched; ``fmt`` is ``ulaw`` or ``alaw``.
    """
    if fmt not in _STREAMED_FORMATS:
        raise ValueError(f"format must be ulaw or alaw, got {fmt!r}")
    if not frames:
        frames = [b"\xff" * FRAME_BYTES]
    if len(frames) == 1 and fmt == "ulaw":
        return bytes(frames[0])
    total = np.zeros(len(frames[0]), dtype=np.int32)
    for f in frames:
        if len(f) != len(frames[0]):
            raise ValueError("frames to mix must have the same length")
        total += ulaw_decode(f).astype(np.int32)
    mixed = np.clip(total, -32768, 32767).astype(np.int16)
    return ulaw_encode(mixed) if fmt == "ulaw" else alaw_encode(mixed)


@dataclass(frozen=True)
class RtpStats:
    """What an RTP socket of the fake received from the app."""

    packets: int  # every datagram, well-formed or not
    malformed: int  # datagrams that were not RTP
    payload_bytes: int  # payload bytes of the well-formed packets
    sources: tuple[Addr, ...]  # distinct source addresses, in order of first appearance
    first_packet_at: float | None  # time.monotonic() of the first datagram
    arrival_times: tuple[float, ...]

    def inter_arrival_ms(self) -> list[float]:
        """Gaps between consecutive datagrams, in milliseconds."""
        t = self.arrival_times
        return [(b - a) * 1000.0 for a, b in itertools.pairwise(t)]

    def paced(self, expected_ms: float = 20.0, tolerance_ms: float = 5.0) -> bool:
        """True if the median and mean gaps are both within ``tolerance_ms`` of ``expected_ms``.

        Needs at least three packets. The mean catches bursts that the median would hide.
        """
        gaps = self.inter_arrival_ms()
        if len(gaps) < 2:
            return False
        return (
            abs(statistics.median(gaps) - expected_ms) <= tolerance_ms
            and abs(statistics.fmean(gaps) - expected_ms) <= tolerance_ms
        )


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: RtpPeer) -> None:
        self._peer = peer

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._peer._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("fake asterisk RTP socket %s: %s", self._peer.local, exc)


class RtpPeer:
    """The fake's end of one external-media channel: a UDP socket on 127.0.0.1.

    It sends to ``remote`` (the ``external_host`` the app gave) from ``local`` (the channel's
    ``UNICASTRTP_LOCAL_ADDRESS``/``PORT``) and records everything that arrives at ``local``.
    """

    def __init__(
        self,
        channel_id: str,
        remote: Addr,
        fmt: str,
        *,
        ssrc: int,
        sequence: int,
        timestamp: int,
        on_change: Callable[[], None],
    ) -> None:
        self.channel_id = channel_id
        self.remote = remote
        self.format = fmt
        self.payload_type = _STREAMED_FORMATS[fmt]
        self.ssrc = ssrc
        self.sequence = sequence  # of the next packet
        self.timestamp = timestamp  # of the next audio packet
        self.local: Addr = ("", 0)
        self.received: list[ReceivedPacket] = []
        self.received_from: list[Addr] = []  # aligned with ``received``
        self.sent: list[bytes] = []  # every datagram sent to the app, duplicates included
        self.closed = False
        self._marker_pending = True
        self._transport: asyncio.DatagramTransport | None = None
        self._on_change = on_change
        self._stream_task: asyncio.Task[None] | None = None

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(self), local_addr=(host, 0)
        )
        self._transport = transport
        name = transport.get_extra_info("sockname")
        self.local = (str(name[0]), int(name[1]))

    def build(
        self,
        payload: bytes,
        *,
        payload_type: int | None = None,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> bytes:
        """The next packet of this stream (takes a sequence number; the timestamp is unchanged)."""
        pt = self.payload_type if payload_type is None else payload_type
        ts = self.timestamp if timestamp is None else timestamp
        packet = build_rtp(pt, self.sequence, ts, self.ssrc, payload, marker=marker)
        self.sequence = (self.sequence + 1) & 0xFFFF
        return packet

    def next_audio_packet(self, payload: bytes) -> bytes:
        """The next 20 ms audio packet: seq +1, timestamp +160, marker on the very first."""
        packet = self.build(payload, marker=self._marker_pending)
        self._marker_pending = False
        self.timestamp = (self.timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        return packet

    def send(self, packet: bytes) -> None:
        if self.closed or self._transport is None:
            raise RuntimeError(f"RTP socket of {self.channel_id} is closed")
        self._transport.sendto(packet, self.remote)
        self.sent.append(packet)

    def close(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
            self._stream_task = None
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        parsed = parse_rtp(data)
        now = time.monotonic()
        if parsed is None:
            self.received.append(ReceivedPacket(now, None, bytes(data)))
        else:
            self.received.append(ReceivedPacket(now, parsed[0], parsed[1]))
        self.received_from.append(addr)
        self._on_change()

    def stats(self) -> RtpStats:
        return _stats(self.received, self.received_from)

    def dup_socket(self) -> socket.socket:
        """A duplicate of this channel's socket: what is sent from it comes from the address
        the app was told to expect (the load test sends its RTP that way)."""
        raw = self._transport.get_extra_info("socket") if self._transport is not None else None
        if raw is None or self.closed:
            raise RuntimeError(f"the external-media socket of {self.channel_id} is closed")
        return raw.dup()  # non-blocking, like the original


def _stats(received: Sequence[ReceivedPacket], sources: Sequence[Addr]) -> RtpStats:
    return RtpStats(
        packets=len(received),
        malformed=sum(1 for p in received if p.header is None),
        payload_bytes=sum(len(p.payload) for p in received if p.header is not None),
        sources=tuple(dict.fromkeys(sources)),
        first_packet_at=received[0].arrival if received else None,
        arrival_times=tuple(p.arrival for p in received),
    )


# -- state -----------------------------------------------------------------------------------------
class FrameSource(Protocol):
    """Anything that yields 160-byte μ-law frames by index, e.g. ``ivr.harness.audio.tone()``."""

    def frame(self, index: int) -> bytes: ...


def format_timestamp(moment: datetime) -> str:
    """Asterisk's event timestamp: ``2026-11-28T12:00:00.000+0000``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


@dataclass
class ChannelState:
    """One channel as the fake sees it; ``to_json()`` is the ARI Channel model."""

    id: str
    name: str
    kind: str  # "caller", "external_media" or "agent"
    app: str
    state: str
    creationtime: str
    caller_name: str = ""
    caller_number: str = ""
    connected_name: str = ""
    connected_number: str = ""
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    accountcode: str = ""
    language: str = "en"
    protocol_id: str = ""
    vars: dict[str, str] = field(default_factory=dict)
    show_vars: bool = False  # include ``channelvars`` in event snapshots
    args: list[str] = field(default_factory=list)
    in_stasis: bool = False
    subscribed: bool = False  # the app gets this channel's events
    answered: bool = False
    destroyed: bool = False
    hangup_cause: int | None = None
    bridge_id: str | None = None
    rtp: RtpPeer | None = None  # external-media channels
    external_host: str = ""  # external-media channels
    audio: FrameSource | None = None  # callers and agents: what they say
    audio_index: int = 0  # next frame of ``audio`` to mix

    def to_json(self, *, with_vars: bool | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": self.protocol_id,
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": self.connected_name, "number": self.connected_number},
            "accountcode": self.accountcode,
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": self.language,
        }
        if (self.show_vars if with_vars is None else with_vars) and self.vars:
            data["channelvars"] = dict(self.vars)
        return data


@dataclass
class BridgeState:
    """One bridge; ``to_json()`` is the ARI Bridge model."""

    id: str
    types: list[str]
    name: str
    creationtime: str
    channels: list[str] = field(default_factory=list)
    destroyed: bool = False

    @property
    def mixing(self) -> bool:
        return "mixing" in self.types

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "technology": "softmix" if len(self.channels) > 2 else "simple_bridge",
            "bridge_type": "mixing" if self.mixing else "holding",
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": list(self.channels),
            "creationtime": self.creationtime,
            "video_mode": "none",
        }


@dataclass
class RecordedRequest:
    """One HTTP request the fake received (``status`` is filled in once answered)."""

    method: str
    path: str
    query: dict[str, str]  # repeated parameters joined with ","
    auth_ok: bool
    status: int | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    message: str


@dataclass(eq=False)
class _EventSocket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    apps: list[str]
    dropped: bool = False


@dataclass
class _Req:
    request: web.Request
    record: RecordedRequest
    params: MultiDict[str]
    variables: dict[str, str]
    groups: tuple[str, ...]

    def get(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value else None

    def getall(self, name: str) -> list[str]:
        return [v for raw in self.params.getall(name, []) for v in raw.split(",") if v]


class _RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def _cause_text(cause: int) -> str:
    return _CAUSE_TEXT.get(cause, "Unknown")


def _parse_caller_id(raw: str) -> tuple[str, str]:
    """``"Name" <number>`` / ``Name <number>`` / ``number`` -> (name, number)."""
    m = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', raw)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    return "", raw.strip()


def _split_host_port(raw: str) -> Addr | None:
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", raw)
    if not m:
        return None
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    return (host, port) if 0 < port < 65536 else None


# -- the driver's handle on a call -----------------------------------------------------------------
class FakeCall:
    """One inbound call placed with :meth:`FakeAsterisk.place_call`: the driver's side of it."""

    def __init__(self, fake: FakeAsterisk, channel: ChannelState) -> None:
        self._fake = fake
        self.channel = channel
        self.media_channel_ids: list[str] = []  # external-media channels bridged with the caller
        self.agent_channel_ids: list[str] = []  # agent channels bridged with the caller

    @property
    def channel_id(self) -> str:
        return self.channel.id

    @property
    def audio(self) -> FrameSource:
        """What the caller says (looped 20 ms μ-law frames); may be replaced at any time."""
        assert self.channel.audio is not None
        return self.channel.audio

    @audio.setter
    def audio(self, source: FrameSource) -> None:
        self.channel.audio = source

    @property
    def bridge(self) -> BridgeState | None:
        bid = self.channel.bridge_id
        return self._fake.bridges.get(bid) if bid else None

    @property
    def media(self) -> RtpPeer | None:
        """The RTP peer of the external-media channel bridged with the caller (latest one)."""
        for cid in reversed(self.media_channel_ids):
            peer = self._fake.channels[cid].rtp
            if peer is not None:
                return peer
        return None

    @property
    def agent(self) -> ChannelState | None:
        """The agent channel in the caller's bridge, else the last one that was."""
        bridge = self.bridge
        if bridge is not None:
            for cid in bridge.channels:
                if self._fake.channels[cid].kind == AGENT:
                    return self._fake.channels[cid]
        if self.agent_channel_ids:
            return self._fake.channels[self.agent_channel_ids[-1]]
        return None

    @property
    def received_rtp(self) -> list[ReceivedPacket]:
        """Datagrams the app sent to this call's external-media socket(s), in arrival order."""
        return [p for peer in self._peers() for p in peer.received]

    def prompt_audio(self, payload_type: int | None = None) -> bytes:
        """Payloads of the received RTP packets of ``payload_type`` (default: the stream's)."""
        out = bytearray()
        for peer in self._peers():
            pt = peer.payload_type if payload_type is None else payload_type
            for p in peer.received:
                if p.header is not None and p.header.payload_type == pt:
                    out += p.payload
        return bytes(out)

    def rtp_stats(self) -> RtpStats:
        peers = self._peers()
        return _stats(
            [p for peer in peers for p in peer.received],
            [a for peer in peers for a in peer.received_from],
        )

    def _peers(self) -> list[RtpPeer]:
        peers = [self._fake.channels[c].rtp for c in self.media_channel_ids]
        return [p for p in peers if p is not None]

    async def press(self, digit: str, duration_ms: int = 100) -> None:
        """The caller presses ``digit``: ``ChannelDtmfReceived`` (at the end of the digit)."""
        key = digit.upper()
        if len(key) != 1 or key not in DTMF_EVENT_CODES:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if self.channel.destroyed:
            raise RuntimeError(f"call {self.channel_id} has hung up")
        if self._fake.pace:
            await asyncio.sleep(duration_ms / 1000)
        self._fake._emit_channel(
            self.channel, "ChannelDtmfReceived", {"digit": key, "duration_ms": duration_ms}
        )
        await self._fake.flush_events()

    async def hangup(
        self,
        cause: int = 16,
        *,
        order: Sequence[str] = DEFAULT_HANGUP_ORDER,
        duplicate: bool | Collection[str] = False,
    ) -> None:
        """The caller hangs up. See :meth:`FakeAsterisk.hangup_channel`."""
        await self._fake.hangup_channel(self.channel_id, cause, order=order, duplicate=duplicate)

    async def hangup_agent(
        self,
        cause: int = 16,
        *,
        order: Sequence[str] = DEFAULT_HANGUP_ORDER,
        duplicate: bool | Collection[str] = False,
    ) -> None:
        """The agent bridged with this caller hangs up (or the only live agent, if none is)."""
        agent = self.agent
        if agent is None or agent.destroyed:
            live = [c for c in self._fake.channels.values() if c.kind == AGENT and not c.destroyed]
            if len(live) != 1:
                raise RuntimeError(f"no agent to hang up for call {self.channel_id}")
            agent = live[0]
        await self._fake.hangup_channel(agent.id, cause, order=order, duplicate=duplicate)

    async def send_audio(
        self,
        n_frames: int = 1,
        *,
        drop: Collection[int] = (),
        duplicate: Collection[int] = (),
        reorder: Iterable[tuple[int, int]] = (),
        paced: bool = False,
    ) -> list[bytes]:
        """Send the next ``n_frames`` 20 ms packets of the bridge's mix to the app.

        Indices are 0-based within this call of ``send_audio``: ``drop`` packets are built (they
        use up a sequence number, a timestamp and audio) but never sent, ``duplicate`` ones are
        sent twice in a row, and each ``(i, j)`` in ``reorder`` swaps when packets i and j go
        out. ``paced`` spaces them 20 ms apart in wall time. Returns the datagrams sent, in order.
        Raises RuntimeError unless an external-media channel shares a mixing bridge with the
        caller.
        """
        peer = self._fake._require_peer(self)
        indices = set(drop) | set(duplicate) | {i for pair in reorder for i in pair}
        if any(not 0 <= i < n_frames for i in indices):
            raise ValueError(f"packet indices must be in 0..{n_frames - 1}")
        packets = [self._fake._next_mixed_packet(peer) for _ in range(n_frames)]
        order = list(range(n_frames))
        for i, j in reorder:
            order[i], order[j] = order[j], order[i]
        sent: list[bytes] = []
        loop = asyncio.get_running_loop()
        due = loop.time()
        for index in order:
            if paced:
                due += FRAME_SECONDS
                await asyncio.sleep(max(0.0, due - loop.time()))
            if index in drop:
                continue
            for _ in range(2 if index in duplicate else 1):
                peer.send(packets[index])
                sent.append(packets[index])
        return sent

    async def inject_rtp(self, raw: bytes, *, from_stranger: bool = False) -> Addr:
        """Send arbitrary bytes to the app's RTP port; returns the source address used.

        By default they come from the external-media socket itself; ``from_stranger`` sends them
        from a fresh socket (another port), like a spoofing or misrouted peer.
        """
        peer = self.media
        if peer is None:
            raise RuntimeError(f"call {self.channel_id} has no external-media channel")
        if not from_stranger:
            peer.send(raw)
            return peer.local
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self._fake.host, 0))
            s.sendto(raw, peer.remote)
            host, port = s.getsockname()[:2]
        return (str(host), int(port))

    async def also_send_dtmf_rtp(
        self,
        digit: str,
        *,
        duration_ms: int = 100,
        volume: int = 10,
        payload_type: int = PT_TELEPHONE_EVENT,
    ) -> list[bytes]:
        """Send ``digit`` as RFC 4733 telephone-events on the call's RTP stream.

        One packet per 20 ms with growing durations (marker on the first), then three end
        packets (E bit, final duration); all share the timestamp of the next audio packet, and
        the stream's timestamp then moves on by the event's duration. Paced at 20 ms when the
        fake is. No ``ChannelDtmfReceived`` is emitted: combine with :meth:`press` if wanted.
        """
        key = digit.upper()
        if len(key) != 1 or key not in DTMF_EVENT_CODES:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        steps = max(1, round(duration_ms / 20))
        if steps * SAMPLES_PER_FRAME > 0xFFFF:
            raise ValueError(f"duration_ms too long for one event: {duration_ms}")
        peer = self._fake._require_peer(self)
        event = DTMF_EVENT_CODES[key]
        ts = peer.timestamp
        final = steps * SAMPLES_PER_FRAME
        packets = [
            peer.build(
                telephone_event_payload(
                    event, end=False, volume=volume, duration=k * SAMPLES_PER_FRAME
                ),
                payload_type=payload_type,
                marker=k == 1,
                timestamp=ts,
            )
            for k in range(1, steps)
        ]
        packets += [
            peer.build(
                telephone_event_payload(event, end=True, volume=volume, duration=final),
                payload_type=payload_type,
                marker=steps == 1 and r == 0,
                timestamp=ts,
            )
            for r in range(3)
        ]
        peer.timestamp = (ts + final) & 0xFFFFFFFF
        for i, packet in enumerate(packets):
            if self._fake.pace and 0 < i < steps:
                await asyncio.sleep(FRAME_SECONDS)
            peer.send(packet)
        return packets

    async def wait_for_rtp(self, n_packets: int = 1, timeout: float = 5.0) -> list[ReceivedPacket]:
        """Wait until the app has sent at least ``n_packets`` datagrams to this call."""
        await self._fake.wait_for(
            lambda: len(self.received_rtp) >= n_packets, timeout, f"{n_packets} RTP packets"
        )
        return self.received_rtp

    async def wait_until_bridged(self, timeout: float = 5.0) -> RtpPeer:
        """Wait until an external-media channel shares a mixing bridge with the caller."""
        await self._fake.wait_for(
            lambda: self._fake._bridge_peer(self.channel) is not None, timeout, "media bridge"
        )
        peer = self._fake._bridge_peer(self.channel)
        assert peer is not None
        return peer


# -- the fake itself -------------------------------------------------------------------------------
_Handler = Callable[["FakeAsterisk", _Req], Awaitable[web.StreamResponse]]


class FakeAsterisk:
    """A fake Asterisk 20 ARI server plus RTP peers, on 127.0.0.1. See the module docstring.

    ``pace``: stream caller audio in real time (True) or only on ``FakeCall.send_audio`` (False);
    also makes ``press`` wait for the digit's duration. ``auto_answer_agents``: originated
    channels answer after ``agent_answer_delay`` seconds (else call :meth:`answer_agent` or
    :meth:`reject_agent`; unanswered ones give up after the originate ``timeout``).
    ``media_stasis_delay``: seconds between the answer to ``POST /channels/externalMedia`` and
    the new channel's ``StasisStart`` (real Asterisk answers first and puts the channel in the
    app a little later; until then ``addChannel`` refuses it with 422); None: never. ``seed``
    makes ids, SSRCs and initial sequence numbers/timestamps reproducible; ``clock`` supplies
    event timestamps (default: now, UTC).
    """

    def __init__(
        self,
        *,
        app: str = "consent",
        username: str = "asterisk",
        password: str = "asterisk",
        host: str = "127.0.0.1",
        port: int = 0,
        pace: bool = True,
        caller_audio: FrameSource | None = None,
        agent_audio: FrameSource | None = None,
        auto_answer_agents: bool = True,
        agent_answer_delay: float = 0.0,
        media_stasis_delay: float | None = 0.005,
        asterisk_id: str = "02:42:ac:11:00:02",
        seed: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.app = app
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.pace = pace
        self.caller_audio: FrameSource = caller_audio or harness_audio.tone(440.0, -12.0)
        self.agent_audio: FrameSource = agent_audio or harness_audio.tone(660.0, -12.0)
        self.auto_answer_agents = auto_answer_agents
        self.agent_answer_delay = agent_answer_delay
        self.media_stasis_delay = media_stasis_delay
        self.asterisk_id = asterisk_id
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = random.Random(seed)

        self.channels: dict[str, ChannelState] = {}
        self.bridges: dict[str, BridgeState] = {}
        self.calls: dict[str, FakeCall] = {}  # caller channel id -> call
        self.requests: list[RecordedRequest] = []
        self.observers: list[Callable[[RecordedRequest], None]] = []  # told of each answer
        self.rejected = 0  # requests answered with a 4xx/5xx
        self.events_sent: list[dict[str, Any]] = []  # delivered on an events socket
        self.events_dropped: list[dict[str, Any]] = []  # happened while nobody listened
        self.playbacks: list[dict[str, Any]] = []

        self._epoch = int(time.time())
        self._ids = itertools.count(1)
        self._name_seq = itertools.count(1)
        self._failures: list[_Failure] = []
        self._refusing = False
        self._sockets: list[_EventSocket] = []
        self._app_sockets: dict[str, _EventSocket] = {}
        self._outbox: asyncio.Queue[tuple[_EventSocket, dict[str, Any]]] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving; ``port`` is then the real port."""
        if self._runner is not None:
            raise RuntimeError("already started")
        self._outbox = asyncio.Queue()
        self._pump_task = asyncio.create_task(self._pump(), name="fake-asterisk-events")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every socket and stop serving. Safe to call twice."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for ch in self.channels.values():
            if ch.rtp is not None:
                ch.rtp.close()
        for sock in list(self._sockets):
            sock.dropped = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(code=1001, message=b"shutdown"), 0.5)
            if sock.transport is not None:
                sock.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FakeAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """ARI base URL, e.g. ``http://127.0.0.1:PORT/ari`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}/ari"

    @property
    def events_url(self) -> str:
        """The events websocket URL for ``app`` (without credentials)."""
        return f"ws://{self.host}:{self.port}/ari/events?app={self.app}"

    # -- failure injection -------------------------------------------------------------------------
    async def drop_events_socket(self, *, clean: bool = False) -> int:
        """Close every events websocket abruptly (TCP abort; ``clean``: a 1011 close frame).

        Returns how many were dropped. Events emitted afterwards are lost until the app
        reconnects.
        """
        dropped = list(self._sockets)
        for sock in dropped:
            sock.dropped = True
            self._unregister(sock)
            if clean:
                with contextlib.suppress(Exception):
                    await sock.ws.close(code=1011, message=b"dropped")
            elif sock.transport is not None:
                sock.transport.abort()
        self._notify()
        await asyncio.sleep(0)
        return len(dropped)

    def refuse_connections(self, refuse: bool = True) -> None:
        """While True, ``GET /ari/events`` answers 503 (open sockets stay open)."""
        self._refusing = refuse

    def fail_next(
        self, method: str, path_regex: str, status: int, message: str | None = None
    ) -> None:
        """Make the next request matching ``method`` (or ``*``) and ``path_regex`` fail.

        ``path_regex`` is searched in the full path (``/ari/channels/1.2/answer``). The failed
        request has no effect. Several may be queued; each fires once.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        default = {
            404: "Channel not found",
            409: "Channel not in Stasis application",
            412: "Channel in invalid state",
            500: "Internal Server Error",
        }.get(status, "Injected failure")
        self._failures.append(
            _Failure(method.upper(), re.compile(path_regex), status, message or default)
        )

    # -- driving calls -----------------------------------------------------------------------------
    async def place_call(
        self,
        exten: str,
        caller: str,
        *,
        args: Sequence[str] = (),
        channel_vars: Mapping[str, str] | None = None,
        caller_name: str = "",
        endpoint: str = "caller",
        context: str = "from-external",
        app: str | None = None,
        audio: FrameSource | None = None,
        channel_id: str | None = None,
    ) -> FakeCall:
        """A call to ``exten`` from ``caller`` reaches ``Stasis(app[,args])``: ``StasisStart``.

        The channel (``PJSIP/{endpoint}-0000000n``) is in state ``Ring`` until the app answers.
        ``audio`` is what the caller says (default: the fake's ``caller_audio``).
        """
        self._require_started()
        app = app or self.app
        cid = channel_id or self._new_channel_id()
        if cid in self.channels:
            raise ValueError(f"channel id {cid} exists")
        ch = ChannelState(
            id=cid,
            name=f"PJSIP/{endpoint}-{next(self._name_seq):08x}",
            kind=CALLER,
            app=app,
            state="Ring",
            creationtime=self._now(),
            caller_name=caller_name,
            caller_number=caller,
            context=context,
            exten=exten,
            priority=1,
            app_name="Stasis",
            app_data=",".join([app, *args]),
            protocol_id=f"{self._rng.getrandbits(64):016x}@127.0.0.1",
            vars={str(k): str(v) for k, v in (channel_vars or {}).items()},
            show_vars=bool(channel_vars),
            args=list(args),
            in_stasis=True,
            subscribed=True,
            audio=audio or self.caller_audio,
        )
        self.channels[cid] = ch
        call = FakeCall(self, ch)
        self.calls[cid] = call
        self._emit_channel(ch, "StasisStart", {"args": list(ch.args)})
        await self.flush_events()
        return call

    async def hangup_channel(
        self,
        channel_id: str,
        cause: int = 16,
        *,
        order: Sequence[str] = DEFAULT_HANGUP_ORDER,
        duplicate: bool | Collection[str] = False,
    ) -> None:
        """The far end of ``channel_id`` hangs up (a caller's BYE, an agent putting down).

        ``order`` is the order of ``ChannelHangupRequest``, ``StasisEnd``, ``ChannelDestroyed``
        (and optionally ``ChannelLeftBridge``; if left out it comes just before ``StasisEnd``
        when the channel was bridged). Leaving an event out of ``order`` means it is never sent.
        ``duplicate``: True sends every event twice in a row, or name the ones to repeat. The
        channel leaves its bridge and is destroyed; the app gets no events for a channel that
        has left Stasis. With the default order a caller's events end at ``StasisEnd``, as on
        Asterisk 22; an order given explicitly is sent as given (to test odd orders).
        """
        ch = self.channels.get(channel_id)
        if ch is None:
            raise KeyError(channel_id)
        if ch.destroyed:
            raise RuntimeError(f"channel {channel_id} is already destroyed")
        faithful = tuple(order) == DEFAULT_HANGUP_ORDER and not duplicate
        self._terminate(ch, cause, order=order, duplicate=duplicate, soft=False, faithful=faithful)
        await self.flush_events()

    async def answer_agent(self, channel_id: str) -> None:
        """An originated (ringing) channel answers: it enters Stasis (``StasisStart``)."""
        ch = self._ringing_agent(channel_id)
        self._agent_answers(ch)
        await self.flush_events()

    async def reject_agent(self, channel_id: str, cause: int = 21) -> None:
        """An originated (ringing) channel is refused: ``ChannelDestroyed`` with ``cause``."""
        ch = self._ringing_agent(channel_id)
        self._terminate(ch, cause, order=("ChannelDestroyed",), duplicate=False, soft=False)
        await self.flush_events()

    @property
    def agents(self) -> list[ChannelState]:
        """Every channel the app originated, in order."""
        return [c for c in self.channels.values() if c.kind == AGENT]

    @property
    def external_media(self) -> list[ChannelState]:
        """Every external-media channel the app created, in order."""
        return [c for c in self.channels.values() if c.kind == EXTERNAL_MEDIA]

    @property
    def connected_apps(self) -> list[str]:
        return sorted(app for app, s in self._app_sockets.items() if not s.ws.closed)

    def is_connected(self, app: str | None = None) -> bool:
        return (app or self.app) in self.connected_apps

    # -- waiting -----------------------------------------------------------------------------------
    async def flush_events(self) -> None:
        """Wait until every emitted event has been written to its socket (or lost)."""
        if self._outbox is not None:
            await self._outbox.join()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds; it is re-checked on every request, event and datagram.

        Raises TimeoutError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake asterisk: timed out waiting for {what}")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(fut)

    async def wait_connected(self, app: str | None = None, timeout: float = 5.0) -> None:
        """Wait until an events websocket is open for ``app``."""
        await self.wait_for(lambda: self.is_connected(app), timeout, "events websocket")

    async def wait_for_request(
        self, method: str, path_regex: str, timeout: float = 5.0, *, start: int = 0
    ) -> RecordedRequest:
        """Wait for an answered request (index >= ``start``) matching ``method`` and the path."""
        pattern = re.compile(path_regex)

        def find() -> RecordedRequest | None:
            for r in self.requests[start:]:
                if r.status is not None and r.method == method.upper() and pattern.search(r.path):
                    return r
            return None

        await self.wait_for(lambda: find() is not None, timeout, f"{method} {path_regex}")
        found = find()
        assert found is not None
        return found

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- events ------------------------------------------------------------------------------------
    def _now(self) -> str:
        return format_timestamp(self._clock())

    def _emit(self, app: str, type_: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {"type": type_, "timestamp": self._now(), **fields}
        event["asterisk_id"] = self.asterisk_id
        event["application"] = app
        sock = self._app_sockets.get(app)
        if sock is None or sock.dropped or sock.ws.closed or self._outbox is None:
            self.events_dropped.append(event)
        else:
            self._outbox.put_nowait((sock, event))
        self._notify()
        return event

    def _emit_channel(
        self, ch: ChannelState, type_: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        if ch.subscribed:
            self._emit(ch.app, type_, {**(fields or {}), "channel": ch.to_json()})

    async def _pump(self) -> None:
        assert self._outbox is not None
        while True:
            sock, event = await self._outbox.get()
            try:
                if sock.dropped or sock.ws.closed:
                    self.events_dropped.append(event)
                else:
                    await sock.ws.send_str(json.dumps(event))
                    self.events_sent.append(event)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("fake asterisk: event %s lost: %s", event["type"], exc)
                self.events_dropped.append(event)
            finally:
                self._outbox.task_done()
                self._notify()

    def _unregister(self, sock: _EventSocket) -> None:
        for app in sock.apps:
            if self._app_sockets.get(app) is sock:
                del self._app_sockets[app]
        if sock in self._sockets:
            self._sockets.remove(sock)

    # -- HTTP --------------------------------------------------------------------------------------
    def _check_auth(self, request: web.Request) -> bool:
        expected = f"{self.username}:{self.password}"
        if request.query.get("api_key") == expected:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == expected

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        query = {k: ",".join(request.query.getall(k)) for k in dict.fromkeys(request.query.keys())}
        record = RecordedRequest(request.method, request.path, query, self._check_auth(request))
        self.requests.append(record)
        self._notify()
        try:
            response = await self._answer(request, record)
        except _RequestError as exc:
            response = _error(exc.status, exc.message)
        if record.status is None:
            record.status = response.status
        if response.status >= 400:
            self.rejected += 1
        for observer in self.observers:
            observer(record)
        self._notify()
        return response

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if not record.auth_ok:
            return _error(
                401,
                "Authentication required",
                {"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
            )
        path = request.path
        for i, failure in enumerate(self._failures):
            if failure.method in ("*", request.method) and failure.pattern.search(path):
                del self._failures[i]
                return _error(failure.status, failure.message)
        if not path.startswith("/ari/"):
            return _error(404, "Resource not found")
        handler, groups, allowed = self._route(path[len("/ari") :], request.method)
        if handler is None:
            if allowed:
                return _error(405, "Invalid method", {"Allow": ", ".join(sorted(allowed))})
            return _error(404, "Resource not found")
        params, variables = await self._params(request)
        return await handler(self, _Req(request, record, params, variables, groups))

    def _route(self, sub: str, method: str) -> tuple[_Handler | None, tuple[str, ...], set[str]]:
        allowed: set[str] = set()
        for pattern, methods in _ROUTES:
            m = pattern.fullmatch(sub)
            if m is None:
                continue
            if method in methods:
                return methods[method], m.groups(), allowed
            allowed |= set(methods)
        return None, (), allowed

    async def _params(self, request: web.Request) -> tuple[MultiDict[str], dict[str, str]]:
        params: MultiDict[str] = MultiDict(request.query)
        variables: dict[str, str] = {}
        if not request.can_read_body:
            return params, variables
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            for k, v in form.items():
                if isinstance(v, str):
                    params.add(k, v)
            return params, variables
        raw = await request.read()
        if not raw.strip():
            return params, variables
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _RequestError(400, "Error parsing request body") from exc
        if not isinstance(body, dict):
            raise _RequestError(400, "Error parsing request body")
        for k, v in body.items():
            if k == "variables":
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    raise _RequestError(400, "Only string values in the 'variables' object allowed")
                variables = {str(a): b for a, b in v.items()}
            elif k not in params and v is not None:
                if isinstance(v, bool):
                    params.add(k, "true" if v else "false")
                elif isinstance(v, list):
                    params.add(k, ",".join(str(x) for x in v))
                else:
                    params.add(k, str(v))
        return params, variables

    # -- lookups -----------------------------------------------------------------------------------
    def _require_started(self) -> None:
        if self._runner is None:
            raise RuntimeError("FakeAsterisk is not started")

    def _new_channel_id(self) -> str:
        return f"{self._epoch}.{next(self._ids)}"

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _id_taken(self, channel_id: str) -> bool:
        """Asterisk refuses a new channel id that is a prefix (case-insensitive) of any live
        channel's id, not only an equal one (channelstorage's uniqueid lookup compares the
        new id's length only)."""
        new = channel_id.lower()
        return any(
            cid.lower().startswith(new) for cid, ch in self.channels.items() if not ch.destroyed
        )

    def _live(self, channel_id: str) -> ChannelState | None:
        ch = self.channels.get(channel_id)
        return ch if ch is not None and not ch.destroyed else None

    def _control(self, channel_id: str) -> ChannelState:
        """The channel if it is in Stasis; else 404 / 409 like find_control()."""
        ch = self._live(channel_id)
        if ch is None:
            raise _RequestError(404, "Channel not found")
        if not ch.in_stasis:
            raise _RequestError(409, "Channel not in Stasis application")
        return ch

    def _bridge(self, bridge_id: str) -> BridgeState:
        bridge = self.bridges.get(bridge_id)
        if bridge is None or bridge.destroyed:
            raise _RequestError(404, "Bridge not found")
        return bridge

    def _ringing_agent(self, channel_id: str) -> ChannelState:
        ch = self._live(channel_id)
        if ch is None or ch.kind != AGENT or ch.answered:
            raise RuntimeError(f"{channel_id} is not a ringing originated channel")
        return ch

    # -- REST handlers -----------------------------------------------------------------------------
    async def _h_events(self, rq: _Req) -> web.StreamResponse:
        if self._refusing:
            return _error(503, "Service Unavailable")
        apps = rq.getall("app")
        if not apps:
            return _error(400, "Missing parameter app")
        ws = web.WebSocketResponse(autoping=True, timeout=1.0)
        if not ws.can_prepare(rq.request).ok:
            return _error(400, "WebSocket upgrade required")
        transport = rq.request.transport
        await ws.prepare(rq.request)
        rq.record.status = 101
        sock = _EventSocket(ws, transport, apps)
        for app in apps:
            old = self._app_sockets.get(app)
            if old is not None and old is not sock and self._outbox is not None:
                replaced = {
                    "type": "ApplicationReplaced",
                    "timestamp": self._now(),
                    "asterisk_id": self.asterisk_id,
                    "application": app,
                }
                self._outbox.put_nowait((old, replaced))
            self._app_sockets[app] = sock
        self._sockets.append(sock)
        self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._unregister(sock)
            self._notify()
        return ws

    async def _h_asterisk_info(self, rq: _Req) -> web.StreamResponse:
        return web.json_response(
            {
                "build": {"os": "Linux", "kernel": "fake", "machine": "x86_64", "user": "fake"},
                "system": {"version": "20.10.0", "entity_id": self.asterisk_id},
                "config": {"name": "", "default_language": "en"},
                "status": {"startup_time": self._now(), "last_reload_time": self._now()},
            }
        )

    async def _h_asterisk_ping(self, rq: _Req) -> web.StreamResponse:
        return web.json_response(
            {"asterisk_id": self.asterisk_id, "ping": "pong", "timestamp": self._now()}
        )

    async def _h_channels_list(self, rq: _Req) -> web.StreamResponse:
        live = [c.to_json() for c in self.channels.values() if not c.destroyed]
        return web.json_response(live)

    async def _h_channel_get(self, rq: _Req) -> web.StreamResponse:
        ch = self._live(rq.groups[0])
        if ch is None:
            return _error(404, "Channel not found")
        return web.json_response(ch.to_json())

    async def _h_originate(self, rq: _Req) -> web.StreamResponse:
        cid = rq.groups[0] if rq.groups else rq.get("channelId")
        endpoint = rq.get("endpoint")
        app = rq.get("app")
        if cid is not None and len(cid) > 127:
            return _error(400, "Uniqueid length exceeds maximum of 127")
        if not endpoint:
            return _error(400, "Endpoint must be specified")
        if rq.get("originator") and rq.get("formats"):
            return _error(400, "Originator and formats can't both be specified")
        tech, _, resource = endpoint.partition("/")
        if not tech or not resource:
            return _error(400, "Invalid endpoint specified")
        if not app and not rq.get("extension"):
            return _error(400, "Application or extension must be specified")
        timeout_raw = rq.get("timeout") or "30"
        try:
            timeout = int(timeout_raw)
        except ValueError:
            return _error(400, f"timeout: invalid integer {timeout_raw!r}")
        originator = rq.get("originator")
        if originator and self._live(originator) is None:
            return _error(400, "Provided originator channel was not found")
        if cid and self._id_taken(cid):
            return _error(409, "Channel with given unique ID already exists")
        cid_name, cid_num = _parse_caller_id(rq.get("callerId") or "")
        app_args = rq.params.get("appArgs") or ""
        device = re.split(r"[@/;]", resource, maxsplit=1)[0] or resource
        ch = ChannelState(
            id=cid or self._new_channel_id(),
            name=f"{tech}/{device}-{next(self._name_seq):08x}",
            kind=AGENT,
            app=app or self.app,
            state="Down",
            creationtime=self._now(),
            caller_name=cid_name,
            caller_number=cid_num,
            connected_name=cid_name,
            connected_number=cid_num,
            exten=rq.get("extension") or "s",
            context=rq.get("context") or "default",
            protocol_id=f"{self._rng.getrandbits(64):016x}@127.0.0.1",
            vars=dict(rq.variables),
            show_vars=bool(rq.variables),
            args=app_args.split(",") if app_args else [],
            subscribed=bool(app),
            audio=self.agent_audio,
        )
        self.channels[ch.id] = ch
        body = ch.to_json()
        if self.auto_answer_agents:
            self._spawn(self._auto_answer(ch.id))
        elif timeout != -1:
            seconds = timeout if timeout > 0 else 30
            loop = asyncio.get_running_loop()
            self._timers[ch.id] = loop.call_later(seconds, self._agent_no_answer, ch.id)
        return web.json_response(body)

    async def _auto_answer(self, channel_id: str) -> None:
        if self.agent_answer_delay > 0:
            await asyncio.sleep(self.agent_answer_delay)
        else:
            await asyncio.sleep(0)
        ch = self._live(channel_id)
        if ch is not None and not ch.answered:
            self._agent_answers(ch)

    def _agent_answers(self, ch: ChannelState) -> None:
        timer = self._timers.pop(ch.id, None)
        if timer is not None:
            timer.cancel()
        ch.state = "Up"
        ch.answered = True
        self._emit_channel(ch, "ChannelStateChange")
        if ch.subscribed:  # originated with an app: it runs Stasis(app[,appArgs])
            ch.in_stasis = True
            ch.app_name = "Stasis"
            ch.app_data = ",".join([ch.app, *ch.args])
            self._emit_channel(ch, "StasisStart", {"args": list(ch.args)})
        self._media_changed()

    def _agent_no_answer(self, channel_id: str) -> None:
        self._timers.pop(channel_id, None)
        ch = self._live(channel_id)
        if ch is not None and not ch.answered:
            self._terminate(ch, 19, order=("ChannelDestroyed",), duplicate=False, soft=False)

    async def _h_external_media(self, rq: _Req) -> web.StreamResponse:
        app = rq.get("app")
        external_host = rq.get("external_host")
        fmt = rq.get("format")
        if not app:
            return _error(400, "app cannot be empty")
        if not external_host:
            return _error(400, "external_host cannot be empty")
        remote = _split_host_port(external_host)
        if remote is None:
            return _error(400, "external_host must be <host>:<port>")
        if not fmt:
            return _error(400, "format cannot be empty")
        encapsulation = (rq.get("encapsulation") or "rtp").lower()
        transport = (rq.get("transport") or "udp").lower()
        if (encapsulation, transport) == ("audiosocket", "tcp"):
            return _error(501, "AudioSocket is not implemented by the fake Asterisk")
        if (encapsulation, transport) != ("rtp", "udp"):
            return _error(501, "The encapsulation and/or transport is not supported")
        if (rq.get("connection_type") or "client") != "client":
            return _error(400, "connection_type must be 'client'")
        if (rq.get("direction") or "both") != "both":
            return _error(400, "direction must be 'both'")
        if fmt not in _KNOWN_FORMATS:
            return _error(400, f"Provided format ({fmt}) was not found")
        if fmt not in _STREAMED_FORMATS:
            return _error(501, f"The fake Asterisk streams only ulaw and alaw, not {fmt}")
        cid = rq.get("channelId")
        if cid is not None and self._id_taken(cid):
            # Asterisk 22 reports this as a general failure here (409 only on originate).
            return _error(500, "An internal error prevented this request from being handled")
        cid = cid or self._new_channel_id()
        peer = RtpPeer(
            cid,
            remote,
            fmt,
            ssrc=self._rng.getrandbits(32),
            sequence=self._rng.getrandbits(16),
            timestamp=self._rng.getrandbits(32),
            on_change=self._notify,
        )
        await peer.open(self.host)
        data = rq.get("data")
        ch = ChannelState(
            id=cid,
            name=f"UnicastRTP/{external_host}-0x{self._rng.getrandbits(48):012x}",
            kind=EXTERNAL_MEDIA,
            app=app,
            state="Down",
            creationtime=self._now(),
            vars={
                **rq.variables,
                "UNICASTRTP_LOCAL_ADDRESS": peer.local[0],
                "UNICASTRTP_LOCAL_PORT": str(peer.local[1]),
            },
            args=[data] if data else [],
            subscribed=True,
            rtp=peer,
            external_host=external_host,
        )
        self.channels[cid] = ch
        # The UnicastRTP channel answers at once, but enters Stasis(app[,data]) only after the
        # reply has gone out, as on Asterisk 22 (see media_stasis_delay).
        ch.state = "Up"
        ch.answered = True
        body = ch.to_json(with_vars=True)
        if self.media_stasis_delay is not None:
            self._spawn(self._media_enters_stasis(ch.id, self.media_stasis_delay))
        return web.json_response(body)

    async def _media_enters_stasis(self, channel_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        ch = self._live(channel_id)
        if ch is None or ch.in_stasis:
            return
        self._emit_channel(ch, "ChannelStateChange")  # Up, as Asterisk 22 reports it first
        ch.in_stasis = True
        ch.app_name = "Stasis"
        ch.app_data = ",".join([ch.app, *ch.args])
        self._emit_channel(ch, "StasisStart", {"args": list(ch.args)})

    async def _h_hangup(self, rq: _Req) -> web.StreamResponse:
        ch = self._live(rq.groups[0])
        if ch is None:
            return _error(404, "Channel not found")
        reason, reason_code = rq.get("reason"), rq.get("reason_code")
        if reason and reason_code:
            return _error(400, "The reason and reason_code can't both be specified")
        cause = 16
        if reason_code:
            try:
                cause = int(reason_code)
            except ValueError:
                return _error(400, "Invalid reason for hangup reason code provided")
        elif reason:
            if reason not in _HANGUP_REASONS:
                return _error(400, "Invalid reason for hangup reason provided")
            cause = _HANGUP_REASONS[reason]
        self._terminate(
            ch,
            cause,
            order=("ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"),
            duplicate=False,
            soft=True,
        )
        return web.Response(status=204)

    async def _h_answer(self, rq: _Req) -> web.StreamResponse:
        ch = self._control(rq.groups[0])
        if ch.state != "Up":
            ch.state = "Up"
            ch.answered = True
            self._emit_channel(ch, "ChannelStateChange")
            self._media_changed()
        return web.Response(status=204)

    async def _h_continue(self, rq: _Req) -> web.StreamResponse:
        ch = self._control(rq.groups[0])
        priority = rq.get("priority")
        if priority is not None and not priority.lstrip("-").isdigit():
            return _error(400, f"priority: invalid integer {priority!r}")
        if rq.get("context"):
            ch.context = rq.get("context") or ch.context
        if rq.get("extension"):
            ch.exten = rq.get("extension") or ch.exten
        self._leave_bridge(ch)
        ch.in_stasis = False
        self._emit_channel(ch, "StasisEnd")
        if ch.kind == CALLER:
            ch.subscribed = False  # back in the dialplan; the app hears no more of it
        else:  # channels the app created have no dialplan to return to: they hang up
            self._destroy(ch, 16)
        self._media_changed()
        return web.Response(status=204)

    async def _h_play(self, rq: _Req) -> web.StreamResponse:
        ch = self._control(rq.groups[0])
        if ch.state == "Down":
            return _error(412, "Channel in invalid state")
        media = rq.getall("media")
        if not media:
            return _error(400, "Missing parameter media")
        for name in ("offsetms", "skipms"):
            value = rq.get(name)
            if value is not None and (not value.lstrip("-").isdigit() or int(value) < 0):
                return _error(400, f"{name} cannot be negative")
        playback_id = (rq.groups[1] if len(rq.groups) > 1 else None) or rq.get("playbackId")
        playback = {
            "id": playback_id or self._new_uuid(),
            "media_uri": media[0],
            "target_uri": f"channel:{ch.id}",
            "language": rq.get("lang") or ch.language,
            "state": "queued",
        }
        self.playbacks.append(playback)
        self._emit(ch.app, "PlaybackStarted", {"playback": {**playback, "state": "playing"}})
        self._emit(ch.app, "PlaybackFinished", {"playback": {**playback, "state": "done"}})
        return web.json_response(
            playback, status=201, headers={"Location": f"/playbacks/{playback['id']}"}
        )

    async def _h_variable_get(self, rq: _Req) -> web.StreamResponse:
        name = rq.get("variable")
        if not name:
            return _error(400, "Variable name is required")
        ch = self._live(rq.groups[0])
        if ch is None:
            return _error(404, "Provided channel was not found")
        if name not in ch.vars:
            return _error(404, "Provided variable was not found")
        return web.json_response({"value": ch.vars[name]})

    async def _h_variable_set(self, rq: _Req) -> web.StreamResponse:
        name = rq.get("variable")
        if not name:
            return _error(400, "Variable name is required")
        ch = self._control(rq.groups[0])
        ch.vars[name] = rq.params.get("value") or ""
        return web.Response(status=204)

    async def _h_bridges_list(self, rq: _Req) -> web.StreamResponse:
        return web.json_response([b.to_json() for b in self.bridges.values() if not b.destroyed])

    async def _h_bridge_get(self, rq: _Req) -> web.StreamResponse:
        return web.json_response(self._bridge(rq.groups[0]).to_json())

    async def _h_bridge_create(self, rq: _Req) -> web.StreamResponse:
        bid = rq.groups[0] if rq.groups else rq.get("bridgeId")
        types = rq.getall("type") or ["mixing"]
        if any(t not in _BRIDGE_TYPES for t in types):
            return _error(400, "Invalid bridge type")
        existing = self.bridges.get(bid) if bid else None
        if existing is not None and not existing.destroyed:
            if rq.groups:  # POST /bridges/{id} creates or updates
                existing.name = rq.get("name") or existing.name
                return web.json_response(existing.to_json())
            return _error(409, f"Bridge with id '{bid}' already exists")
        bridge = BridgeState(
            id=bid or self._new_uuid(),
            types=types,
            name=rq.get("name") or "",
            creationtime=self._now(),
        )
        self.bridges[bridge.id] = bridge
        return web.json_response(bridge.to_json())

    async def _h_bridge_destroy(self, rq: _Req) -> web.StreamResponse:
        bridge = self._bridge(rq.groups[0])
        members = [self.channels[cid] for cid in bridge.channels]
        for ch in members:
            self._leave_bridge(ch)
        bridge.destroyed = True
        for app in dict.fromkeys([self.app, *(ch.app for ch in members)]):
            self._emit(app, "BridgeDestroyed", {"bridge": bridge.to_json()})
        self._media_changed()
        return web.Response(status=204)

    def _bridge_members(self, rq: _Req) -> list[ChannelState]:
        ids = rq.getall("channel")
        if not ids:
            raise _RequestError(400, "Missing parameter channel")
        members = []
        for cid in ids:
            ch = self._live(cid)
            if ch is None:
                raise _RequestError(400, "Channel not found")
            if not ch.in_stasis:
                raise _RequestError(422, "Channel not in Stasis application")
            members.append(ch)
        return members

    async def _h_add_channel(self, rq: _Req) -> web.StreamResponse:
        bridge = self._bridge(rq.groups[0])
        for ch in self._bridge_members(rq):
            if ch.bridge_id == bridge.id:
                continue
            self._leave_bridge(ch)  # a channel is moved from its old bridge
            bridge.channels.append(ch.id)
            ch.bridge_id = bridge.id
            self._emit_channel(ch, "ChannelEnteredBridge", {"bridge": bridge.to_json()})
        self._media_changed()
        return web.Response(status=204)

    async def _h_remove_channel(self, rq: _Req) -> web.StreamResponse:
        bridge = self._bridge(rq.groups[0])
        members = self._bridge_members(rq)
        if any(ch.bridge_id != bridge.id for ch in members):
            return _error(422, "Channel not in this bridge")
        for ch in members:
            self._leave_bridge(ch)
        self._media_changed()
        return web.Response(status=204)

    # -- channel and bridge state ------------------------------------------------------------------
    def _leave_bridge(self, ch: ChannelState, *, emit: bool = True) -> dict[str, Any] | None:
        """Take ``ch`` out of its bridge; returns the bridge JSON afterwards (None if unbridged)."""
        if ch.bridge_id is None:
            return None
        bridge = self.bridges.get(ch.bridge_id)
        ch.bridge_id = None
        if bridge is None:
            return None
        if ch.id in bridge.channels:
            bridge.channels.remove(ch.id)
        snapshot = bridge.to_json()
        if emit:
            self._emit_channel(ch, "ChannelLeftBridge", {"bridge": snapshot})
        return snapshot

    def _destroy(self, ch: ChannelState, cause: int) -> None:
        ch.destroyed = True
        ch.in_stasis = False
        ch.hangup_cause = cause
        self._emit_channel(
            ch, "ChannelDestroyed", {"cause": cause, "cause_txt": _cause_text(cause)}
        )
        ch.subscribed = False
        if ch.rtp is not None:
            ch.rtp.close()
        timer = self._timers.pop(ch.id, None)
        if timer is not None:
            timer.cancel()

    def _terminate(
        self,
        ch: ChannelState,
        cause: int,
        *,
        order: Sequence[str],
        duplicate: bool | Collection[str],
        soft: bool,
        faithful: bool = True,
    ) -> None:
        """Hang ``ch`` up, emitting the hang-up events in ``order`` (see ``hangup_channel``);
        ``faithful``: as Asterisk would, so nothing after a caller's StasisEnd."""
        names = list(order)
        unknown = [n for n in names if n not in _HANGUP_EVENTS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"order must name distinct events of {sorted(_HANGUP_EVENTS)}")
        twice = set(names) if duplicate is True else set(duplicate or ())
        if "ChannelLeftBridge" not in names and ch.bridge_id is not None:
            at = names.index("StasisEnd") if "StasisEnd" in names else len(names)
            names.insert(at, "ChannelLeftBridge")
        was_in_stasis = ch.in_stasis
        bridge_json = self._leave_bridge(ch, emit=False)
        ch.in_stasis = False
        ch.destroyed = True
        ch.hangup_cause = cause
        snapshot = ch.to_json()
        fields: dict[str, dict[str, Any]] = {
            "ChannelHangupRequest": {"soft": True, "cause": cause} if soft else {"cause": cause},
            "ChannelLeftBridge": {"bridge": bridge_json},
            "StasisEnd": {},
            "ChannelDestroyed": {"cause": cause, "cause_txt": _cause_text(cause)},
        }
        if ch.subscribed:
            for name in names:
                if name == "ChannelLeftBridge" and bridge_json is None:
                    continue
                if name == "StasisEnd" and not was_in_stasis:
                    continue
                for _ in range(2 if name in twice else 1):
                    self._emit(ch.app, name, {**fields[name], "channel": snapshot})
                if name == "StasisEnd" and ch.kind == CALLER and faithful:
                    # A channel that came in by Stasis() in the dialplan is the app's only
                    # until StasisEnd: Asterisk 22 sends it nothing after (no
                    # ChannelDestroyed). Channels the app created stay subscribed.
                    break
        ch.subscribed = False
        if ch.rtp is not None:
            ch.rtp.close()
        timer = self._timers.pop(ch.id, None)
        if timer is not None:
            timer.cancel()
        self._media_changed()

    def _bridge_peer(self, ch: ChannelState) -> RtpPeer | None:
        """The open RTP peer of an external-media channel sharing a mixing bridge with ``ch``."""
        if ch.destroyed or ch.bridge_id is None:
            return None
        bridge = self.bridges.get(ch.bridge_id)
        if bridge is None or bridge.destroyed or not bridge.mixing:
            return None
        for cid in reversed(bridge.channels):
            peer = self.channels[cid].rtp
            if peer is not None and not peer.closed:
                return peer
        return None

    def _require_peer(self, call: FakeCall) -> RtpPeer:
        peer = self._bridge_peer(call.channel)
        if peer is None:
            raise RuntimeError(
                f"call {call.channel_id}: no external-media channel in a mixing bridge with it"
            )
        return peer

    def _voices(self, peer: RtpPeer) -> list[ChannelState]:
        """The members of ``peer``'s bridge whose audio it hears (everyone with a voice)."""
        ch = self.channels[peer.channel_id]
        bridge = self.bridges.get(ch.bridge_id) if ch.bridge_id else None
        if bridge is None or bridge.destroyed or not bridge.mixing:
            return []
        members = [self.channels[c] for c in bridge.channels]
        return [m for m in members if m.audio is not None and m.answered and not m.destroyed]

    def _next_mixed_packet(self, peer: RtpPeer) -> bytes:
        frames = []
        for voice in self._voices(peer):
            assert voice.audio is not None
            frames.append(voice.audio.frame(voice.audio_index))
            voice.audio_index += 1
        return peer.next_audio_packet(mix_frames(frames, peer.format))

    def _media_changed(self) -> None:
        """Re-associate calls with their media/agents and start or stop paced streams."""
        for call in self.calls.values():
            ch = call.channel
            bridge = self.bridges.get(ch.bridge_id) if ch.bridge_id else None
            if bridge is None:
                continue
            for cid in bridge.channels:
                other = self.channels[cid]
                if other.kind == EXTERNAL_MEDIA and cid not in call.media_channel_ids:
                    call.media_channel_ids.append(cid)
                elif other.kind == AGENT and cid not in call.agent_channel_ids:
                    call.agent_channel_ids.append(cid)
        if self.pace:
            for ch in self.channels.values():
                peer = ch.rtp
                if peer is None or peer.closed:
                    continue
                wanted = bool(self._voices(peer))
                running = peer._stream_task is not None and not peer._stream_task.done()
                if wanted and not running:
                    peer._stream_task = self._spawn(self._stream(peer))
                elif not wanted and running and peer._stream_task is not None:
                    peer._stream_task.cancel()
                    peer._stream_task = None
        self._notify()

    async def _stream(self, peer: RtpPeer) -> None:
        """Paced mode: one packet of the bridge's mix every 20 ms while anyone speaks."""
        loop = asyncio.get_running_loop()
        due = loop.time() + FRAME_SECONDS
        while not peer.closed:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if peer.closed or not self._voices(peer):
                return
            peer.send(self._next_mixed_packet(peer))
            due += FRAME_SECONDS
            if loop.time() - due > 5 * FRAME_SECONDS:  # stalled: resynchronise, do not burst
                due = loop.time() + FRAME_SECONDS

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake asterisk task failed", exc_info=task.exception())


_ROUTES: list[tuple[re.Pattern[str], dict[str, _Handler]]] = [
    (re.compile(p), methods)
    for p, methods in [
        (r"/events", {"GET": FakeAsterisk._h_events}),
        (r"/asterisk/info", {"GET": FakeAsterisk._h_asterisk_info}),
        (r"/asterisk/ping", {"GET": FakeAsterisk._h_asterisk_ping}),
        (r"/channels", {"GET": FakeAsterisk._h_channels_list, "POST": FakeAsterisk._h_originate}),
        (r"/channels/externalMedia", {"POST": FakeAsterisk._h_external_media}),
        (
            r"/channels/([^/]+)",
            {
                "GET": FakeAsterisk._h_channel_get,
                "POST": FakeAsterisk._h_originate,
                "DELETE": FakeAsterisk._h_hangup,
            },
        ),
        (r"/channels/([^/]+)/answer", {"POST": FakeAsterisk._h_answer}),
        (r"/channels/([^/]+)/continue", {"POST": FakeAsterisk._h_continue}),
        (r"/channels/([^/]+)/play", {"POST": FakeAsterisk._h_play}),
        (r"/channels/([^/]+)/play/([^/]+)", {"POST": FakeAsterisk._h_play}),
        (
            r"/channels/([^/]+)/variable",
            {"GET": FakeAsterisk._h_variable_get, "POST": FakeAsterisk._h_variable_set},
        ),
        (r"/bridges", {"GET": FakeAsterisk._h_bridges_list, "POST": FakeAsterisk._h_bridge_create}),
        (
            r"/bridges/([^/]+)",
            {
                "GET": FakeAsterisk._h_bridge_get,
                "POST": FakeAsterisk._h_bridge_create,
                "DELETE": FakeAsterisk._h_bridge_destroy,
            },
        ),
        (r"/bridges/([^/]+)/addChannel", {"POST": FakeAsterisk._h_add_channel}),
        (r"/bridges/([^/]+)/removeChannel", {"POST": FakeAsterisk._h_remove_channel}),
    ]
]
