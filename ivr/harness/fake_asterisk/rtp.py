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
import itertools
import logging
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from media.g711 import alaw_encode, ulaw_decode, ulaw_encode

log = logging.getLogger(__name__)

Addr = tuple[str, int]
FRAME_BYTES = 160  # 20 ms of 8 kHz G.711
SAMPLES_PER_FRAME = 160  # RTP timestamp units per 20 ms packet
PT_PCMU = 0
PT_PCMA = 8
PT_TELEPHONE_EVENT = 101
RTP_VERSION = 2
STREAMED_FORMATS = {"ulaw": PT_PCMU, "alaw": PT_PCMA}
#: RFC 4733 event codes for the DTMF keys.
DTMF_EVENT_CODES: dict[str, int] = {
    **{str(d): d for d in range(10)},
    **{"*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15},
}


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
    if b0 >> 6 != RTP_VERSION:
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
    header = RtpHeader(
        RTP_VERSION, padding, extension, cc, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc
    )
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
    if fmt not in STREAMED_FORMATS:
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

    @classmethod
    def of(cls, received: Sequence[ReceivedPacket], sources: Sequence[Addr]) -> RtpStats:
        return cls(
            packets=len(received),
            malformed=sum(1 for p in received if p.header is None),
            payload_bytes=sum(len(p.payload) for p in received if p.header is not None),
            sources=tuple(dict.fromkeys(sources)),
            first_packet_at=received[0].arrival if received else None,
            arrival_times=tuple(p.arrival for p in received),
        )

    def inter_arrival_ms(self) -> list[float]:
        """Gaps between consecutive datagrams, in milliseconds."""
        return [(b - a) * 1000.0 for a, b in itertools.pairwise(self.arrival_times)]

    def paced(self, expected_ms: float = 20.0, tolerance_ms: float = 5.0) -> bool:
        """True if the median and mean gaps are both within ``tolerance_ms`` of ``expected_ms``
        (the mean catches bursts the median would hide). Needs at least three packets."""
        gaps = self.inter_arrival_ms()
        if len(gaps) < 2:
            return False
        return (
            abs(statistics.median(gaps) - expected_ms) <= tolerance_ms
            and abs(statistics.fmean(gaps) - expected_ms) <= tolerance_ms
        )


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, peer: RtpPeer) -> None:
        self._peer = peer

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._peer.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("fake asterisk RTP socket %s: %s", self._peer.local, exc)


class RtpPeer:
    """The fake's end of one external-media channel. It sends to ``remote`` (the
    ``external_host`` the app gave) from ``local`` (the channel's ``UNICASTRTP_LOCAL_*``) and
    records everything that arrives at ``local``."""

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
        self.payload_type = STREAMED_FORMATS[fmt]
        self.ssrc = ssrc
        self.sequence = sequence  # of the next packet
        self.timestamp = timestamp  # of the next audio packet
        self.local: Addr = ("", 0)
        self.received: list[ReceivedPacket] = []
        self.received_from: list[Addr] = []  # aligned with ``received``
        self.closed = False
        self.stream_task: asyncio.Task[None] | None = None  # paced mode's sender
        self._marker_pending = True
        self._transport: asyncio.DatagramTransport | None = None
        self._on_change = on_change

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, 0)
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

    def dup_socket(self) -> socket.socket:
        """A duplicate of this channel's socket: what is sent from it comes from the address
        the app was told to expect (the load test sends its RTP that way)."""
        raw = self._transport.get_extra_info("socket") if self._transport is not None else None
        if raw is None or self.closed:
            raise RuntimeError(f"the external-media socket of {self.channel_id} is closed")
        dup: socket.socket = raw.dup()  # non-blocking, like the original
        return dup

    def close(self) -> None:
        if self.stream_task is not None:
            self.stream_task.cancel()
            self.stream_task = None
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    def on_datagram(self, data: bytes, addr: Addr) -> None:
        parsed = parse_rtp(data)
        header, payload = parsed if parsed is not None else (None, bytes(data))
        self.received.append(ReceivedPacket(time.monotonic(), header, payload))
        self.received_from.append(addr)
        self._on_change()

    def stats(self) -> RtpStats:
        return RtpStats.of(self.received, self.received_from)
