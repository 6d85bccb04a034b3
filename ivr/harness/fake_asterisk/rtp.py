"""RTP and RFC 4733 as the fake Asterisk speaks them: a deliberately independent oracle.

The service reads RTP with ``media/rtp.py`` and RFC 4733 with ``media/dtmf.py``, and the tests
compare what it makes of the fake's packets with what the fake meant to send. Built on the same
code, a mistake there (a marker bit in the wrong place, a duration read as little-endian) would
be made identically on both sides and pass; so this module is written from RFC 3550 §5.1 and
RFC 4733 §2.3 alone and shares nothing with them. Only G.711 comes from ``media/g711.py``, which
``tests/test_g711.py`` checks bit-exact against the ITU tables.

``RtpPeer`` is the fake's end of one external-media channel: a UDP socket on the fake's host
that sends to the ``external_host`` the app gave and records everything that arrives.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from ivr.harness.audio import FRAME_BYTES
from media.g711 import ulaw_decode, ulaw_encode

Addr = tuple[str, int]
SAMPLES_PER_FRAME = 160  # RTP timestamp units per 20 ms packet
PT_PCMU = 0
PT_TELEPHONE_EVENT = 101
DTMF_EVENT_CODES = {key: code for code, key in enumerate("0123456789*#ABCD")}  # RFC 4733 §3.2
_HEADER = struct.Struct("!BBHII")


class RtpHeader(NamedTuple):
    version: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int


class ReceivedPacket(NamedTuple):
    """One datagram that reached a fake RTP socket; ``header`` is None if it was not RTP."""

    arrival: float  # time.monotonic()
    source: Addr
    header: RtpHeader | None
    payload: bytes


def parse_addr(raw: str) -> Addr | None:
    """``HOST:PORT`` or ``[IPV6]:PORT`` (port 0 to 65535); None for anything else."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", raw)
    if m is None or int(m.group(2) or m.group(4)) > 65535:
        return None
    return m.group(1) or m.group(3), int(m.group(2) or m.group(4))


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
    return _HEADER.pack(0x80, byte1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def parse_rtp(data: bytes) -> tuple[RtpHeader, bytes] | None:
    """Header and payload of a version 2 RTP packet as the service sends them (no padding, no
    extension, no CSRCs); None for anything else, which the tests count as malformed."""
    if len(data) < _HEADER.size:
        return None
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 != 0x80:
        return None
    return RtpHeader(2, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc), bytes(data[_HEADER.size :])


def telephone_event_payload(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """RFC 4733 payload: ``event u8 | E:1 R:1 volume:6 | duration u16``."""
    if not (0 <= event <= 255 and 0 <= volume <= 63 and 0 <= duration <= 0xFFFF):
        raise ValueError(f"event {event}, volume {volume} or duration {duration} out of range")
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def mix_frames(frames: Sequence[bytes]) -> bytes:
    """What a mixing bridge sends: the sum of μ-law ``frames`` as linear PCM, clipped, in μ-law.
    One frame passes through untouched."""
    if not frames:
        frames = [b"\xff" * FRAME_BYTES]
    if len(frames) == 1:
        return bytes(frames[0])
    if any(len(f) != len(frames[0]) for f in frames):
        raise ValueError("frames to mix must have the same length")
    total = np.sum([ulaw_decode(f).astype(np.int32) for f in frames], axis=0)
    return ulaw_encode(np.clip(total, -32768, 32767).astype(np.int16))


class RtpPeer(asyncio.DatagramProtocol):
    """The fake's end of one external-media channel: sends to ``remote`` (the app's
    ``external_host``) from ``local`` (the channel's ``UNICASTRTP_LOCAL_*``), and records what
    arrives at ``local``. The fake streams μ-law only (``fmt`` must be ``ulaw``)."""

    def __init__(
        self,
        channel_id: str,
        remote: Addr,
        fmt: str,
        *,
        rng: random.Random,
    ) -> None:
        if fmt != "ulaw":
            raise ValueError(f"the fake Asterisk streams only ulaw, not {fmt}")
        self.channel_id = channel_id
        self.remote = remote
        self.payload_type = PT_PCMU
        self.ssrc: int = rng.getrandbits(32)
        self.sequence: int = rng.getrandbits(16)  # of the next packet
        self.timestamp: int = rng.getrandbits(32)  # of the next audio packet
        self.local: Addr = ("", 0)
        self.received: list[ReceivedPacket] = []
        self.closed = False
        self._marker_pending = True
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        name = transport.get_extra_info("sockname")
        self.local = (str(name[0]), int(name[1]))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        parsed = parse_rtp(data)
        header, payload = parsed if parsed is not None else (None, bytes(data))
        source = (str(addr[0]), int(addr[1]))
        self.received.append(ReceivedPacket(time.monotonic(), source, header, payload))

    def build(
        self, payload: bytes, *, payload_type: int | None = None, marker: bool = False
    ) -> bytes:
        """The next packet of this stream (takes a sequence number; the timestamp is unchanged)."""
        pt = self.payload_type if payload_type is None else payload_type
        packet = build_rtp(pt, self.sequence, self.timestamp, self.ssrc, payload, marker=marker)
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

    def dup_socket(self) -> socket.socket:
        """A duplicate of this channel's socket: what is sent from it comes from the address
        the app was told to expect (the load test sends its RTP that way)."""
        raw = self._transport.get_extra_info("socket") if self._transport is not None else None
        if raw is None or self.closed:
            raise RuntimeError(f"the external-media socket of {self.channel_id} is closed")
        dup: socket.socket = raw.dup()  # non-blocking, like the original
        return dup

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True
