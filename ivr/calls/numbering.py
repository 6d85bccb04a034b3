"""A media stream's own numbering, checked against its history: sequence numbers and media
timestamps in milliseconds, as Twilio's Media Streams send them (and any platform that numbers
and stamps its media messages so can use it). Sans-I/O: the
platform feeds numbers in and gets back what to do; what is odd is counted (``counters``) and
said (``note``, which the platform rate-limits).

- Sequence numbers go up by one per message. A repeated or late number is dropped; a gap of up
  to :data:`MAX_SEQUENCE_GAP` counts the messages missing. A larger jump, either way, is a
  broken number, not a gap: the message is dropped and counted, and the numbering follows only
  if the next message continues from it. So one bad number never makes every later message
  look out of order.
- A frame's timestamp may not run more than :data:`MAX_AHEAD_MS` ahead of both the audio the
  stream has delivered and the wall time since it started, nor step back more than
  :data:`MAX_BACK_MS` on its track. A frame that does (one timestamp of 4e9 ms) is counted and
  put right after its track's previous one: a jump never stretches the recording or moves the
  call's clock, and the frames after it keep their place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SEQUENCE_GAP = 1500  # 15 s of both tracks
MAX_AHEAD_MS = 5_000
MAX_BACK_MS = 1_000
ULAW_BYTES_PER_MS = 8


@dataclass(slots=True)
class MediaNumbering:
    counters: Counter[str]
    note: Callable[..., None]  # (kind, message, *args): a warning about this stream's input
    where: Callable[[], str]  # what the warnings name: the call, or the stream
    wall: Callable[[], float]
    last_seq: int = 0  # the hot path advances it itself for the next number in line
    jump_seq: int = -1  # the last message dropped for a jump in its sequence number
    opened: float = 0.0  # wall time of the stream's start
    next_ms: list[int] = field(default_factory=lambda: [-1, -1])  # per track: its next frame
    track_ms: list[int] = field(default_factory=lambda: [0, 0])  # per track: audio delivered
    delivered_ms: int = 0  # the most of any track

    def start(self, sequence: int) -> None:
        self.last_seq, self.opened = sequence, self.wall()

    def in_order(self, sequence: int) -> bool:
        """Whether to take a message numbered ``sequence`` (module docstring)."""
        counters, last = self.counters, self.last_seq
        if last < sequence <= last + MAX_SEQUENCE_GAP:
            if sequence > last + 1:
                counters["messages_missing"] += sequence - last - 1
            self.last_seq, self.jump_seq = sequence, -1
            return True
        where = self.where()
        if last - MAX_SEQUENCE_GAP <= sequence <= last:
            counters["messages_out_of_order"] += 1
            self.note("out-of-order", "%s: message %d after %d dropped", where, sequence, last)
            return False
        if self.jump_seq >= 0 and sequence == self.jump_seq + 1:
            counters["sequence_renumbered"] += 1
            self.note(
                "renumbered", "%s: numbering continues from %d (was %d)", where, sequence, last
            )
            self.last_seq, self.jump_seq = sequence, -1
            return True
        self.jump_seq = sequence
        counters["sequence_jumps"] += 1
        self.note(
            "sequence-jump",
            "%s: message %d after %d dropped: a jump, not a gap",
            where,
            sequence,
            last,
        )
        return False

    def media_ms(self, track: int, timestamp: int, size: int) -> int:
        """A frame's time in the stream (ms), put right if it is a jump (module docstring)."""
        expected = self.next_ms[track]
        if (
            timestamp > self.delivered_ms + MAX_AHEAD_MS
            and timestamp > (self.wall() - self.opened) * 1000 + MAX_AHEAD_MS
        ) or timestamp < expected - MAX_BACK_MS:
            taken = expected if expected >= 0 else self.delivered_ms
            self.counters["media_timestamp_jumps"] += 1
            self.note(
                "timestamp-jump",
                "%s: media timestamp %d ms is a jump; taken as %d ms",
                self.where(),
                timestamp,
                taken,
            )
            timestamp = taken
        length = size // ULAW_BYTES_PER_MS
        self.next_ms[track] = timestamp + length
        heard = self.track_ms[track] = self.track_ms[track] + length
        if heard > self.delivered_ms:
            self.delivered_ms = heard
        return timestamp
