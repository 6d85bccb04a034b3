"""RTP (RFC 3550) packets for the Asterisk external-media leg: parsing, sending, receive hygiene.

Asterisk's ``externalMedia`` channel sends us PCMU in 20 ms RTP packets over UDP and plays the
RTP we send back. This module is the pure, socket-free part of that: the adapter owns the
sockets and the clock, and hands datagrams in and out.

- :func:`parse_rtp` / :func:`build_rtp` convert between datagrams and :class:`RtpPacket`.
- :class:`RtpSender` numbers our outgoing 160-byte PCMU frames (sequence, timestamp, SSRC,
  marker) the way RFC 3550/3551 expect.
- :class:`JitterBuffer` turns the packets we receive into an in-order stream of 20 ms frames
  with media timestamps, so recordings line up even when UDP reorders, duplicates or loses
  packets, or the far end restarts its stream.
- :func:`classify` separates audio from RFC 4733 telephone-events and anything else, because
  only audio may enter the jitter buffer.

Everything is driven by packet contents alone (no wall clock), so tests are deterministic; the
only injectable source of non-determinism is the ``random.Random`` used by :class:`RtpSender`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from media.g711 import ULAW_SILENCE

__all__ = [
    "CLOCK_RATE",
    "DEFAULT_DTMF_PT",
    "FRAME_BYTES",
    "HEADER_BYTES",
    "PT_PCMU",
    "Frame",
    "JitterBuffer",
    "RtpError",
    "RtpPacket",
    "RtpSender",
    "Stats",
    "build_rtp",
    "classify",
    "parse_rtp",
]

HEADER_BYTES = 12
RTP_VERSION = 2
PT_PCMU = 0
# Asterisk's default dynamic payload type for RFC 4733 telephone-event.
DEFAULT_DTMF_PT = 101
# PCMU is one byte per sample at 8 kHz, so 20 ms is 160 bytes and 160 timestamp ticks.
CLOCK_RATE = 8000
FRAME_BYTES = 160

_HEADER = struct.Struct("!BBHII")
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet; the message says why."""


@dataclass(slots=True)  # not frozen: frozen __init__ costs 4x, and this runs 50 times a second
class RtpPacket:
    """The header fields we use plus the payload (CSRCs, extension and padding stripped)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    """Decode one RTP datagram, skipping CSRCs, a header extension and padding.

    Raises :class:`RtpError` with the reason when the datagram is not valid RTP version 2, so
    the adapter can count it as malformed and carry on.
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise RtpError(f"RTP packet too short: {size} bytes, the fixed header needs {HEADER_BYTES}")
    byte0, byte1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = byte0 >> 6
    if version != RTP_VERSION:
        raise RtpError(f"unsupported RTP version {version} (expected {RTP_VERSION})")
    has_padding = bool(byte0 & 0x20)
    has_extension = bool(byte0 & 0x10)
    csrc_count = byte0 & 0x0F

    offset = HEADER_BYTES + 4 * csrc_count
    if offset > size:
        raise RtpError(
            f"CSRC count {csrc_count} needs a {offset}-byte header but the packet has {size} bytes"
        )
    if has_extension:
        # RFC 3550 §5.3.1: 16-bit profile id, 16-bit length in 32-bit words, then the words.
        if offset + 4 > size:
            raise RtpError(
                f"header extension flag set but only {size - offset} bytes follow the CSRCs"
            )
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
        if offset > size:
            raise RtpError(
                f"header extension of {words} words overruns the packet "
                f"({offset} header bytes, packet has {size})"
            )

    end = size
    if has_padding:
        # The last byte counts the padding bytes including itself, so 0 is never valid.
        if end == offset:
            raise RtpError("padding flag set but there is no byte left for the padding count")
        pad = data[-1]
        if pad == 0 or pad > end - offset:
            raise RtpError(f"invalid padding length {pad}: {end - offset} bytes follow the header")
        end -= pad

    return RtpPacket(
        payload_type=byte1 & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=bool(byte1 & 0x80),
        payload=bytes(data[offset:end]),
    )


def build_rtp(packet: RtpPacket) -> bytes:
    """Encode a packet as RTP version 2 with no padding, extension or CSRCs.

    Raises ``ValueError`` if a field does not fit its header width, rather than letting
    ``struct`` fail with a less useful message or silently truncate.
    """
    _check_range("payload_type", packet.payload_type, 0x80)
    _check_range("sequence", packet.sequence, _SEQ_MOD)
    _check_range("timestamp", packet.timestamp, _TS_MOD)
    _check_range("ssrc", packet.ssrc, _TS_MOD)
    byte1 = (0x80 if packet.marker else 0) | packet.payload_type
    header = _HEADER.pack(RTP_VERSION << 6, byte1, packet.sequence, packet.timestamp, packet.ssrc)
    return header + bytes(packet.payload)


def _check_range(name: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise ValueError(f"RTP {name} {value} out of range 0..{limit - 1}")


def classify(
    pkt: RtpPacket, dtmf_pt: int = DEFAULT_DTMF_PT, audio_pt: int = PT_PCMU
) -> Literal["audio", "dtmf", "other"]:
    """Say what a received packet carries: PCMU audio, an RFC 4733 telephone-event, or other.

    Only ``"audio"`` packets may go to :meth:`JitterBuffer.push`; telephone-events share the
    stream's sequence numbers but are not audio frames, and anything else (comfort noise,
    an unexpected codec, RTCP on a muxed port) must not be recorded as μ-law.
    """
    if pkt.payload_type == audio_pt:
        return "audio"
    if pkt.payload_type == dtmf_pt:
        return "dtmf"
    return "other"


class RtpSender:
    """Numbers our outgoing PCMU frames as one RTP stream.

    Initial sequence number, timestamp and SSRC are random (RFC 3550 §5.1); pass a seeded
    ``random.Random`` in tests. Each packet advances the sequence by 1 and the timestamp by
    the frame's 160 samples. The marker bit is set on the first packet of the stream and on
    the first packet after :meth:`start_talkspurt` (RFC 3551 §4.1), which tells the receiver
    to re-sync its playout rather than treat the pause as loss. Pacing (one packet per 20 ms)
    is the caller's job.
    """

    def __init__(
        self,
        *,
        payload_type: int = PT_PCMU,
        frame_bytes: int = FRAME_BYTES,
        ssrc: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        _check_range("payload_type", payload_type, 0x80)
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        # SystemRandom by default: predictable initial values help attacks on the stream.
        rng = rng if rng is not None else random.SystemRandom()
        self.payload_type = payload_type
        self.frame_bytes = frame_bytes
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        _check_range("ssrc", self.ssrc, _TS_MOD)
        self.sequence = rng.getrandbits(16)
        """Sequence number the next packet will carry."""
        self.timestamp = rng.getrandbits(32)
        """RTP timestamp the next packet will carry."""
        self._marker = True

    def start_talkspurt(self, silent_frames: int = 0) -> None:
        """Mark the next packet as the start of a talkspurt.

        ``silent_frames`` is how many frame periods passed without sending; the timestamp
        jumps over them so the receiver places the next audio at the right time.
        """
        if silent_frames < 0:
            raise ValueError(f"silent_frames must be >= 0, got {silent_frames}")
        self.timestamp = (self.timestamp + silent_frames * self.frame_bytes) % _TS_MOD
        self._marker = True

    def packet(self, frame: bytes) -> bytes:
        """Wrap one PCMU frame (exactly ``frame_bytes`` long) in the next RTP header."""
        if len(frame) != self.frame_bytes:
            # A short frame would desync the timestamp from the 20 ms pacing: pad it upstream.
            raise ValueError(f"frame must be {self.frame_bytes} bytes, got {len(frame)}")
        data = build_rtp(
            RtpPacket(
                payload_type=self.payload_type,
                sequence=self.sequence,
                timestamp=self.timestamp,
                ssrc=self.ssrc,
                marker=self._marker,
                payload=bytes(frame),
            )
        )
        self._marker = False
        self.sequence = (self.sequence + 1) % _SEQ_MOD
        # PCMU has one sample per byte, so the frame length is its duration in clock ticks.
        self.timestamp = (self.timestamp + self.frame_bytes) % _TS_MOD
        return data


@dataclass(slots=True)  # not frozen, for the same reason as RtpPacket
class Frame:
    """One frame released by the jitter buffer, in stream order.

    ``seq_index`` counts released frames from 0 (filled frames included, +1 per frame, also
    across resyncs); ``timestamp_ms`` is the frame's media time since the start of the
    stream; ``filled`` marks silence standing in for a lost packet.
    """

    seq_index: int
    timestamp_ms: int
    payload: bytes
    filled: bool


@dataclass(slots=True)
class Stats:
    """Receive counters for one stream.

    ``received`` counts every audio packet pushed. Once flushed, ``received == released -
    lost + duplicates + late + foreign_ssrc + jumps``. ``malformed`` is not touched by the
    buffer: the adapter increments it when :func:`parse_rtp` fails. ``jumps`` counts packets
    dropped because their sequence number or timestamp jumped and the stream did not follow
    them (RFC 3550 A.1's probation); ``lost`` counts every frame filled with silence.
    """

    received: int = 0
    released: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    foreign_ssrc: int = 0
    resyncs: int = 0
    malformed: int = 0
    jumps: int = 0


@dataclass(slots=True)
class _Slot:
    time: int  # media time in clock ticks, relative to the first packet seen
    payload: bytes
    skipped: int  # ticks of media time skipped right before this packet by a resync


def _signed(diff: int, modulus: int) -> int:
    """Shortest signed distance for a wrapped counter difference (RFC 1982 style)."""
    diff %= modulus
    return diff - modulus if diff >= modulus // 2 else diff


class JitterBuffer:
    """Receive-side hygiene for one PCMU RTP stream: in-order 20 ms frames with media times.

    - Locks to the first SSRC seen; other SSRCs are dropped (``stats.foreign_ssrc``).
    - Sequence numbers (16-bit) and timestamps (32-bit) are unwrapped, so wrap-around is
      invisible to the caller.
    - Packets are released as soon as they are in order. A missing packet is waited for
      until ``window`` newer packets have arrived (a packet may be up to ``window`` places
      late), then replaced by a silence frame (``filled=True``, ``stats.lost``, ``gaps``).
      At the start of the stream the first frame is held until ``window`` newer packets
      have arrived, so a reordered first packet is not lost either.
    - Duplicates and packets whose slot was already released are dropped
      (``stats.duplicates``, ``stats.late``).
    - A packet that jumps (its sequence number more than ``window`` + 1 ahead or more than
      ``max_seq_jump`` behind, or its timestamp more than ``max_gap_ms`` away from where its
      sequence number puts it) is held on probation (RFC 3550 A.1) until the next packet: if
      that one continues from it (within ``window`` places, timestamps agreeing), the jump
      was real (loss, an outage, a restart) and both are taken; otherwise the held packet is
      dropped and counted (``stats.jumps``), and the stream goes on as before. One wild packet
      therefore never becomes the new baseline (which made every later packet "late", or
      moved media time by its timestamp).
    - A real jump of more than ``max_gap_ms`` of missing packets, or a backward one, is a
      restart of the far end's stream, not loss: the buffer releases what it holds, counts
      ``stats.resyncs`` and continues from the new packet. Media time keeps growing by the
      RTP timestamp difference only when sequence numbers and timestamps agree on it (an
      outage of at most ``max_resync_gap_ms``), else by one frame; a timestamp that leaves
      the sequence number by more than ``max_gap_ms`` moves media time by what the sequence
      number says (counted in ``stats.resyncs``). So timestamps alone never stretch a
      recording by more than ``max_gap_ms`` per packet the stream actually follows.
    - Released frames never overlap: ``timestamp_ms`` grows by at least one frame per frame,
      whatever the timestamps say, so a recording built from them never overwrites audio.
      A timestamp that runs ahead of the sequence number by less than ``max_gap_ms`` is the
      sender pausing (silence suppression) and is kept as is, without a gap entry.
    - ``frame_bytes`` must match the sender's packetization (Asterisk: 20 ms, 160 bytes):
      it sets the spacing of filled frames and the expected timestamp step.

    ``gaps`` lists ``(start_ms, duration_ms)`` media-time ranges without received audio:
    silence-filled losses and the span skipped by a resync; adjacent ranges are merged.
    Only audio packets may be pushed (see :func:`classify`).
    """

    def __init__(
        self,
        window: int = 3,
        frame_bytes: int = FRAME_BYTES,
        silence: int = ULAW_SILENCE,
        *,
        audio_pt: int = PT_PCMU,
        clock_rate: int = CLOCK_RATE,
        max_gap_ms: int = 2000,
        max_seq_jump: int = 1000,
        max_resync_gap_ms: int = 60_000,
        history: int = 1024,
    ) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if not 0 <= silence <= 0xFF:
            raise ValueError(f"silence must be a byte value, got {silence}")
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history}")
        self.window = window
        self.frame_bytes = frame_bytes
        self.audio_pt = audio_pt
        self.clock_rate = clock_rate
        self.max_seq_jump = max_seq_jump
        # PCMU: one sample (one clock tick) per byte.
        self._frame_ticks = frame_bytes
        frame_ms = max(1, frame_bytes * 1000 // clock_rate)
        # A frame's length in whole milliseconds, or 0 when it is not one (``push_run``).
        self.frame_ms = frame_ms if frame_bytes * 1000 % clock_rate == 0 else 0
        self._max_gap_packets = max(window, max_gap_ms // frame_ms)
        self._max_gap_ticks = max_gap_ms * clock_rate // 1000
        self._max_resync_ticks = max_resync_gap_ms * clock_rate // 1000
        self._silence = bytes([silence]) * frame_bytes
        self._history_size = history

        self.stats = Stats()
        self.gaps: list[tuple[int, int]] = []

        self._ssrc: int | None = None
        # Extended sequence numbers and media times are anchored on the highest packet seen.
        self._seq_ref_raw = 0
        self._max_ext = 0
        self._ts_ref_raw = 0
        self._ts_ref_time = 0
        self._buffer: dict[int, _Slot] = {}
        self._started = False
        self._next = 0  # extended sequence number of the next frame to release
        self._origin_ext = 0
        self._origin_time = 0
        self._last_time = 0  # media time of the last released frame
        # Which of the last ``history`` released frames carried a received packet (1) rather
        # than silence (0), to tell a duplicate from a late packet: a ring indexed by extended
        # sequence number. Frames are released in unbroken order (``_next`` only ever steps by
        # one), so the ring's slots are exactly the frames ``_next - history`` to ``_next - 1``.
        # One byte per frame: a dict and a deque of the same history took 17 KiB per call.
        self._released = bytearray(history)
        self._held: RtpPacket | None = None  # a jump on probation (see the class docstring)

    @property
    def ssrc(self) -> int | None:
        """The SSRC the buffer locked to, or None before the first packet."""
        return self._ssrc

    def __len__(self) -> int:
        """Packets held waiting for reordering."""
        return len(self._buffer)

    def push(self, pkt: RtpPacket) -> list[Frame]:
        """Take one received audio packet; return the frames it lets through, in order."""
        if pkt.payload_type != self.audio_pt:
            # Feeding a telephone-event into the audio stream would record its payload as noise.
            raise ValueError(
                f"JitterBuffer takes audio (PT {self.audio_pt}) only, got PT {pkt.payload_type}"
            )
        self.stats.received += 1
        if self._ssrc is None:
            self._ssrc = pkt.ssrc
            self._seq_ref_raw = pkt.sequence
            self._ts_ref_raw = pkt.timestamp
            self._buffer[0] = _Slot(0, bytes(pkt.payload), 0)
            return self._drain()
        if pkt.ssrc != self._ssrc:
            self.stats.foreign_ssrc += 1
            return []
        held = self._held
        if held is not None:
            self._held = None
            if self._follows(held, pkt):
                return self._take(held) + self._take(pkt)
            self.stats.jumps += 1  # the stream did not follow it: one wild packet
        if self._jumps(pkt):
            self._held = pkt
            return []
        return self._take(pkt)

    def push_plain(self, data: bytes) -> int:
        """The usual datagram, taken without building an :class:`RtpPacket` or a :class:`Frame`:
        RTP version 2 with a bare 12-byte header (no padding, extension, CSRCs or marker), the
        audio payload type, the stream's SSRC, the very next sequence number, one frame later,
        with nothing waiting or on probation. Returns the frame's ``timestamp_ms`` (its payload
        is ``data[HEADER_BYTES:]``, its ``seq_index`` is ``stats.released - 1``), having changed
        the state exactly as ``push(parse_rtp(data))`` would; -1, having changed nothing, for
        any other datagram, which then takes that way."""
        if len(data) <= HEADER_BYTES or data[0] != 0x80 or data[1] != self.audio_pt:
            return -1
        _, _, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if (
            ssrc != self._ssrc
            or (sequence - self._seq_ref_raw) & 0xFFFF != 1
            or (timestamp - self._ts_ref_raw) & 0xFFFFFFFF != self._frame_ticks
            or self._held is not None
            or not self._started
        ):
            return -1
        ext = self._next
        # Everything up to the highest packet seen is released, so nothing is waiting (the
        # buffer only ever holds frames from ``_next`` on).
        if self._max_ext + 1 != ext:
            return -1
        # What going through the buffer would do (``_take``, ``_release_next``, ``_remember``),
        # spelt out without their calls: this runs 50 times a second per call.
        stats = self.stats
        stats.received += 1
        stats.released += 1
        ticks = self._frame_ticks
        time = self._ts_ref_time + ticks
        self._seq_ref_raw = sequence
        self._max_ext = ext
        self._ts_ref_raw = timestamp
        self._ts_ref_time = time
        floor = self._last_time + ticks
        if time < floor:
            time = floor
        self._next = ext + 1
        self._last_time = time
        if self._history_size:
            self._released[ext % self._history_size] = 1
        return (time - self._origin_time) * 1000 // self.clock_rate

    def push_run(self, datagrams: Sequence[bytes], start: int = 0) -> tuple[int, int]:
        """The longest run of datagrams from ``datagrams[start:]`` that :meth:`push_plain`
        would take one after the other, taken at once: ``(count, first_ms)``. The run's frame
        ``i`` has ``timestamp_ms`` ``first_ms + i * frame_ms`` and the payload after its
        :data:`HEADER_BYTES`; the state is as after ``push_plain`` on each. ``(0, -1)``, having
        changed nothing, when ``datagrams[start]`` is not such a datagram (or ``frame_ms`` is
        not a whole number of milliseconds, where frames would not be evenly spaced)."""
        if not self.frame_ms:
            return 0, -1
        first_ms = self.push_plain(datagrams[start]) if start < len(datagrams) else -1
        if first_ms < 0:
            return 0, -1
        # Each next datagram must follow the last one taken exactly: nothing is waiting, so
        # the checks of ``push_plain`` reduce to these, and its updates to one per run.
        pt, ssrc, unpack = self.audio_pt, self._ssrc, _HEADER.unpack_from
        seq, ts, ticks = self._seq_ref_raw, self._ts_ref_raw, self._frame_ticks
        end, stop = start + 1, len(datagrams)
        while end < stop:
            data = datagrams[end]
            if len(data) <= HEADER_BYTES or data[0] != 0x80 or data[1] != pt:
                break
            _, _, sequence, timestamp, source = unpack(data)
            if (
                source != ssrc
                or (sequence - seq) & 0xFFFF != 1
                or (timestamp - ts) & 0xFFFFFFFF != ticks
            ):
                break
            seq, ts = sequence, timestamp
            end += 1
        more = end - start - 1  # taken after the first
        if more:
            stats = self.stats
            stats.received += more
            stats.released += more
            ext = self._next
            self._seq_ref_raw, self._ts_ref_raw = seq, ts
            self._max_ext = ext + more - 1
            self._next = ext + more
            # After ``push_plain`` the last frame's time is at least the reference's, so each
            # later frame is exactly one frame on from the one before.
            self._ts_ref_time += more * ticks
            self._last_time += more * ticks
            size = self._history_size
            if size:
                released = self._released
                for e in range(ext, ext + min(more, size)):  # a longer run fills every slot
                    released[e % size] = 1
        return more + 1, first_ms

    def _jumps(self, pkt: RtpPacket) -> bool:
        """Whether ``pkt`` leaves the stream: too far ahead or behind, or its timestamp far
        from where its sequence number puts it."""
        jump = _signed(pkt.sequence - self._seq_ref_raw, _SEQ_MOD)
        if jump - 1 > self.window or jump < -self.max_seq_jump:
            return True
        if jump <= 0:
            return False  # a straggler: placed by its sequence number if its timestamp is odd
        delta = _signed(pkt.timestamp - self._ts_ref_raw, _TS_MOD)
        return abs(delta - jump * self._frame_ticks) > self._max_gap_ticks

    def _follows(self, held: RtpPacket, pkt: RtpPacket) -> bool:
        """Whether ``pkt`` continues from ``held``: near it, with timestamps that agree."""
        distance = _signed(pkt.sequence - held.sequence, _SEQ_MOD)
        if distance == 0 or abs(distance) > self.window + 1:
            return False
        delta = _signed(pkt.timestamp - held.timestamp, _TS_MOD)
        return abs(delta - distance * self._frame_ticks) <= self._max_gap_ticks

    def _take(self, pkt: RtpPacket) -> list[Frame]:
        jump = _signed(pkt.sequence - self._seq_ref_raw, _SEQ_MOD)
        if jump - 1 > self._max_gap_packets or jump < -self.max_seq_jump:
            return self._resync(pkt, jump)
        ext = self._max_ext + jump

        if jump <= 0:
            floor = self._next if self._started else self._max_ext - self.window
            if ext in self._buffer or self._was_received(ext):
                self.stats.duplicates += 1
                return []
            if ext < floor:
                self.stats.late += 1
                return []
            # A straggler: placed by its timestamp if that fits, else by its sequence number.
            # It never re-anchors the stream, so reordering across a restart cannot bounce
            # the media time back and forth.
            expected = jump * self._frame_ticks
            delta = _signed(pkt.timestamp - self._ts_ref_raw, _TS_MOD)
            offset = delta if abs(delta - expected) <= self._max_gap_ticks else expected
            self._buffer[ext] = _Slot(self._ts_ref_time + offset, bytes(pkt.payload), 0)
            return self._drain()

        expected = jump * self._frame_ticks
        delta = _signed(pkt.timestamp - self._ts_ref_raw, _TS_MOD)
        # Audio timestamps advance at least one frame per sequence number; one that lags
        # would make frames overlap (and overwrite each other in the recording), so the
        # sequence number is the floor. A lead of up to max_gap_ms is the sender's own pause
        # and is kept; beyond that the sequence number says how far media time moves.
        step = expected
        if abs(delta - expected) > self._max_gap_ticks:
            # Sequence continues but the timestamp does not: a new timestamp base.
            self.stats.resyncs += 1
        elif delta > expected:
            step = delta
        skipped = 0
        time = self._ts_ref_time + step
        self._seq_ref_raw = pkt.sequence
        self._max_ext = ext
        self._ts_ref_raw = pkt.timestamp
        self._ts_ref_time = time
        self._buffer[ext] = _Slot(time, bytes(pkt.payload), skipped)
        return self._drain()

    def flush(self) -> list[Frame]:
        """Release everything buffered (end of call), filling holes between held packets. A
        packet still on probation is taken if it is a plain loss (ahead by at most
        ``max_gap_ms``, timestamp agreeing), else dropped (``stats.jumps``)."""
        out: list[Frame] = []
        held, self._held = self._held, None
        if held is not None:
            jump = _signed(held.sequence - self._seq_ref_raw, _SEQ_MOD)
            delta = _signed(held.timestamp - self._ts_ref_raw, _TS_MOD)
            if 0 < jump - 1 <= self._max_gap_packets and (
                abs(delta - jump * self._frame_ticks) <= self._max_gap_ticks
            ):
                out = self._take(held)
            else:
                self.stats.jumps += 1
        if not self._buffer:
            return out
        if not self._started:
            self._start(min(self._buffer))
        while self._buffer:
            out.append(self._release_next())
        return out

    def _resync(self, pkt: RtpPacket, jump: int) -> list[Frame]:
        """Close the old stream and continue, with contiguous frame indices, from ``pkt``."""
        out = self.flush()
        self.stats.resyncs += 1
        delta = _signed(pkt.timestamp - self._ts_ref_raw, _TS_MOD)
        # An outage: sequence numbers and timestamps agree on how long it lasted.
        agree = abs(delta - jump * self._frame_ticks) <= self._max_gap_ticks
        step = delta if agree and 0 < delta <= self._max_resync_ticks else self._frame_ticks
        ext = self._max_ext + 1
        # After the flush the last released frame is the old stream's newest packet.
        time = self._last_time + step
        self._seq_ref_raw = pkt.sequence
        self._max_ext = ext
        self._ts_ref_raw = pkt.timestamp
        self._ts_ref_time = time
        self._buffer[ext] = _Slot(time, bytes(pkt.payload), step - self._frame_ticks)
        out.extend(self._drain())
        return out

    def _start(self, first_ext: int) -> None:
        self._started = True
        self._next = first_ext
        self._origin_ext = first_ext
        self._origin_time = self._buffer[first_ext].time
        self._last_time = self._origin_time - self._frame_ticks

    def _drain(self) -> list[Frame]:
        out: list[Frame] = []
        if not self._started:
            first = min(self._buffer)
            # Hold the first frame until a packet before it could no longer be in the window.
            if self._max_ext - first < self.window:
                return out
            self._start(first)
        while self._next in self._buffer or self._max_ext - self._next > self.window:
            out.append(self._release_next())
        return out

    def _release_next(self) -> Frame:
        ext = self._next
        slot = self._buffer.pop(ext, None)
        if slot is None:
            filled = True
            time = self._last_time + self._frame_ticks
            payload = self._silence
            self.stats.lost += 1
            self._add_gap(time, self._frame_ticks)
        else:
            filled = False
            # A straggler placed by an odd timestamp must still not overlap the frame before.
            time = max(slot.time, self._last_time + self._frame_ticks)
            payload = slot.payload
            if slot.skipped > 0:
                self._add_gap(time - slot.skipped, slot.skipped)
        self._next += 1
        self._last_time = time
        self.stats.released += 1
        self._remember(ext, filled)
        return Frame(
            seq_index=ext - self._origin_ext,
            timestamp_ms=self._ms(time),
            payload=payload,
            filled=filled,
        )

    def _ms(self, time: int) -> int:
        return (time - self._origin_time) * 1000 // self.clock_rate

    def _add_gap(self, start: int, ticks: int) -> None:
        start_ms = self._ms(start)
        duration_ms = self._ms(start + ticks) - start_ms
        if duration_ms <= 0:
            return  # sub-millisecond timestamp jitter is not worth reporting
        if self.gaps and sum(self.gaps[-1]) == start_ms:
            last_start, last_duration = self.gaps[-1]
            self.gaps[-1] = (last_start, last_duration + duration_ms)
        else:
            self.gaps.append((start_ms, duration_ms))

    def _remember(self, ext: int, filled: bool) -> None:
        if self._history_size:
            self._released[ext % self._history_size] = 0 if filled else 1

    def _was_received(self, ext: int) -> bool:
        """Whether frame ``ext`` was released, within the history, from a received packet."""
        return (
            self._started
            and 0 < self._next - ext <= self._history_size
            and self._released[ext % self._history_size] == 1
        )
