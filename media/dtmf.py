"""RFC 4733 telephone-events (DTMF carried in RTP) and once-per-key-press digit detection.

A key press travels as several RTP packets that share one RTP timestamp: a start packet,
continuation packets with a growing duration, and a final packet with the end bit set, which
senders (Asterisk included) transmit three times because UDP may lose it. Counting packets
would therefore turn one key press into several digits; :class:`DtmfDetector` reports each
event exactly once.

Payload layout (4 bytes): ``event u8 | E:1 R:1 volume:6 | duration u16`` (big-endian).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from media.rtp import RtpError

__all__ = [
    "DIGITS",
    "EVENT_DIGITS",
    "DtmfDetector",
    "TelephoneEvent",
    "build_telephone_event",
    "parse_telephone_event",
]

# Event codes 0-15 in order (RFC 4733 §3.2); higher codes are tones/flash, not digits.
EVENT_DIGITS = "0123456789*#ABCD"  # RFC 4733 event codes 0-15, in order
DIGITS = frozenset(EVENT_DIGITS)  # the keys a phone has, however a platform reports them

_PAYLOAD = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload: event code, end bit, volume (dBm0 below 0) and duration
    in RTP clock ticks since the event's timestamp."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character for this event, or None for a non-digit event."""
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Decode a 4-byte telephone-event payload; :class:`~media.rtp.RtpError` (a ValueError)
    if the length is wrong."""
    if len(payload) != _PAYLOAD.size:
        raise RtpError(f"telephone-event payload must be {_PAYLOAD.size} bytes, got {len(payload)}")
    event, flags, duration = _PAYLOAD.unpack(payload)
    # The R bit (0x40) is reserved: ignored on receipt per RFC 4733.
    return TelephoneEvent(
        event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration
    )


def build_telephone_event(event: int, end: bool, volume: int, duration: int) -> bytes:
    """Encode a telephone-event payload (for tests and fake endpoints)."""
    if not 0 <= event <= 0xFF:
        raise ValueError(f"event {event} out of range 0..255")
    if not 0 <= volume <= 0x3F:
        raise ValueError(f"volume {volume} out of range 0..63")
    if not 0 <= duration <= 0xFFFF:
        raise ValueError(f"duration {duration} out of range 0..65535")
    return _PAYLOAD.pack(event, (0x80 if end else 0) | volume, duration)


class DtmfDetector:
    """Turns a stream of telephone-event packets into digits, each key press once.

    An event is identified by its RTP timestamp. Its digit is reported when its end bit is
    first seen; the end-packet retransmissions (and any straggler of a finished event) are
    ignored. If the end packets are all lost, the digit is reported when a packet with a new
    timestamp arrives, or by :meth:`flush` at the end of the call. Non-digit events (flash,
    tones) are tracked the same way but produce no output.
    """

    def __init__(self, remember: int = 32) -> None:
        # Finished timestamps kept to recognise retransmitted end packets; a handful suffices
        # because retransmissions follow within tens of milliseconds.
        self._finished: deque[int] = deque(maxlen=remember)
        self._ts: int | None = None
        self._event = 0

    def feed(self, rtp_timestamp: int, event: TelephoneEvent) -> str | None:
        """Take one packet's timestamp and event; return newly completed digits, or None.

        Usually a single character. It is two characters when this packet both proves that
        an earlier event (whose end packets were lost) is over and is itself an end packet.
        """
        if rtp_timestamp in self._finished:
            return None
        out = ""
        if rtp_timestamp != self._ts:
            out += self._close()
            self._ts = rtp_timestamp
            self._event = event.event
        if event.end:
            out += self._close()
        return out or None

    def flush(self) -> str | None:
        """Report an event still open (its end packets never came), e.g. at hangup."""
        return self._close() or None

    def _close(self) -> str:
        if self._ts is None:
            return ""
        self._finished.append(self._ts)
        self._ts = None
        return EVENT_DIGITS[self._event] if self._event < len(EVENT_DIGITS) else ""
