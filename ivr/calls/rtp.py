"""A call's audio over RTP, for a platform that hands us a plain RTP stream.

Asterisk's external media does (AudioSocket or FreeSWITCH would too), so what such a platform
shares lives here rather than in one of them: a UDP port from a configured range, packets let in
only from the peer the platform announced, the audio through a jitter buffer into the call's
``CallSession``, RFC 4733 keys, and prompts sent as paced RTP. The platform keeps the signalling
(who the peer is, when the call ends) and the call's task; ``RtpLeg`` wakes that task through
``wake`` only when something is due, so the per-packet path never switches tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ivr.calls.playback import FRAME_MS, PacedPrompt
from ivr.calls.session import TRACK_CALLER
from ivr.consent import ConsentFlow
from media.dtmf import DtmfDetector, parse_telephone_event
from media.prompts import Prompt
from media.rtp import (
    HEADER_BYTES,
    PT_PCMU,
    JitterBuffer,
    RtpError,
    RtpSender,
    classify,
    parse_rtp,
)

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 1 << 20  # room for a second of audio should the loop stall briefly
# What one receive asks of the socket: any UDP datagram fits. asyncio's default (256 KiB) costs
# an mmap and an munmap per packet with glibc's allocator (see ivr/serving.py READ_BYTES).
DATAGRAM_BYTES = 64 * 1024
ANY_ADDRESS = ("0.0.0.0", "::")
# Audio that arrives before the call's session starts (the bridge carries it from the moment it
# is made, a moment before the platform's set-up hears that it was), kept for the session: up
# to a second of it, beyond which set-up is stuck and the rest is dropped and counted.
MAX_EARLY_PACKETS = 50
DRAIN_QUIET_SECONDS = 0.02
DRAIN_ROUNDS = 10
# Audio packets taken together, once this many have arrived (200 ms of audio): each call's
# objects are then touched once per batch rather than once per packet, which under load is much
# of a packet's cost. A packet that is not audio in order (a key, a marker, a gap), a prompt
# playing, or an event for the flow (``catch_up``) takes the batch at once, so nothing is
# reordered and the flow never sees an event before the audio that arrived before it. Should
# the caller's audio stop, ``BatchSweeper`` takes the batch within BATCH_SECONDS.
BATCH_PACKETS = 10
BATCH_SECONDS = BATCH_PACKETS * FRAME_MS / 1000
# What an audio packet's second byte is when it continues a stream: no marker, PCMU.
_IN_STREAM_AUDIO = bytes([PT_PCMU])
# A key the platform's signalling reports (ARI's ChannelDtmfReceived) and RFC 4733 carries too
# counts once.
DIGIT_DEDUP_SECONDS = 0.5

# What ``RtpLeg`` asks of the call's task, through ``wake(kind, value)``.
WAKE_PUMP = "pump"  # prompt frames or a flow deadline are due: call ``pump``
WAKE_DIGIT = "rtp-digit"  # an RFC 4733 key (value: the digit)


def _no_wake(kind: str, value: object) -> None:
    """What a released leg wakes (``RtpLeg.release``): nothing."""


class RtpPort(asyncio.DatagramProtocol):
    """The leg's UDP socket; ``closed`` resolves once the port is free again."""

    def __init__(self, leg: RtpLeg) -> None:
        self.leg = leg
        # Each datagram goes straight to the leg, with no method of ours in between: both loops
        # look the handler up on the protocol for every datagram.
        self.datagram_received = leg.received  # type: ignore[method-assign]
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's
        if hasattr(transport, "max_size"):  # asyncio's selector transport (not uvloop's)
            transport.max_size = DATAGRAM_BYTES
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)

    def error_received(self, exc: Exception) -> None:
        log.debug("call %s: RTP socket error: %s", self.leg.name, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class BatchSweeper:
    """Takes the batches the caller's audio stopped filling, for every leg of a platform with
    one timer. Each ``sweep`` (every BATCH_SECONDS / 2) takes a leg's batch when the sweep
    before saw it too, and either no packet has joined it since or the sweep before that saw
    it as well. So a batch whose audio stops is taken within BATCH_SECONDS of its last packet,
    and none waits longer than 1.5 BATCH_SECONDS. A flowing stream's batch (full BATCH_PACKETS
    - 1 frames after its first packet) is still growing at the second sweep that sees it and
    is full before a third, so a sweep takes nothing from it. (A timer armed per batch meant
    1,250 timers a second at 250 calls, each made, queued and fired by the loop; a sweep that
    took every batch it had seen before took most of a flowing stream's batches half full.)"""

    def __init__(self, period: float = BATCH_SECONDS / 2) -> None:
        self.period = period
        # Each leg taking audio, and what the last sweep saw of it: the batch (a new list is
        # made whenever one is taken, so the same list means the same batch), its length then,
        # and whether the sweep before that had seen it as well. None: no batch then.
        self._seen: dict[RtpLeg, tuple[list[bytes], int, bool] | None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, leg: RtpLeg) -> None:
        self._seen[leg] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.period, self._tick)

    def discard(self, leg: RtpLeg) -> None:
        self._seen.pop(leg, None)

    def sweep(self) -> None:
        seen = self._seen
        for leg, before in list(seen.items()):
            batch = leg._batch
            again = False  # whether this sweep sees the batch the sweep before saw
            if before is not None and batch is before[0]:
                _, length, seen_before = before
                if len(batch) == length or seen_before:
                    try:
                        leg.catch_up()
                    except Exception:  # one call's failure must not stop the others' sweeps
                        log.exception("call %s: taking its RTP batch failed", leg.name)
                    batch = leg._batch
                else:
                    again = True
            if leg in seen:  # not discarded meanwhile (its call ended)
                seen[leg] = (batch, len(batch), again) if batch else None

    def _tick(self) -> None:
        self._timer = None
        self.sweep()
        if self._seen:
            self._timer = asyncio.get_running_loop().call_later(self.period, self._tick)


class PortRange:
    """UDP ports from ``low`` to ``high`` handed out in turn, skipping those in use."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host, self.low, self.high = host, low, high
        self._next = low

    async def bind(self, leg: RtpLeg) -> int:
        """Bind ``leg`` to the next free port and return it; OSError when every port is taken."""
        loop = asyncio.get_running_loop()
        span = self.high - self.low + 1
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(span):
            port = self._next
            self._next = self.low + (port - self.low + 1) % span
            # Bound here, not by the loop: a port in use is then EADDRINUSE on every loop
            # (uvloop's create_datagram_endpoint raises an OSError without an errno for it).
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            try:
                _, protocol = await loop.create_datagram_endpoint(lambda: RtpPort(leg), sock=sock)
            except BaseException:
                sock.close()
                raise
            leg.port, leg.protocol = port, protocol
            return port
        raise OSError(
            errno.EADDRINUSE, f"all {span} RTP ports in {self.low}-{self.high} are in use"
        )


class LegSession(Protocol):
    """What a leg asks of its call's session: ``ivr.calls.session.CallSession`` in service.
    A protocol, not that class: compiled (hotpath.py), an attribute typed with a class takes
    only instances of it, and the leg's tests give it sessions of their own."""

    now: float
    flow: ConsentFlow
    before_event: Callable[[], None] | None

    def audio(self, track: int, call_ms: int, payload: bytes) -> None: ...

    def audio_run(
        self, track: int, call_ms: int, step_ms: int, payloads: Sequence[bytes]
    ) -> None: ...

    def at(self, call_time: float) -> float: ...

    def call_time(self) -> float: ...

    def timer(self) -> float | None: ...


@dataclass(eq=False)
class RtpLeg:
    """One call's RTP: what arrives goes to ``session``, prompts go to ``peer``."""

    wake: Callable[[str, object], None]
    name: str = ""  # for the log: the call id once known
    sweeper: BatchSweeper | None = None  # takes a batch that audio stopped filling
    session: LegSession | None = None  # set by ``begin``; audio before it waits in ``early``
    port: int | None = None
    protocol: RtpPort | None = None
    peer: tuple[str, int] | None = None
    playback: PacedPrompt | None = None
    sender: RtpSender = field(default_factory=RtpSender)
    jitter: JitterBuffer = field(default_factory=JitterBuffer)
    dtmf: DtmfDetector = field(default_factory=DtmfDetector)
    media_base_ms: int | None = None
    strangers: int = 0
    malformed: int = 0
    packets: int = 0
    early: list[bytes] = field(default_factory=list)
    early_dropped: int = 0
    closed: bool = False
    last_digit: tuple[str, float] | None = None
    _pump_posted: bool = False
    _batch: list[bytes] = field(default_factory=list)  # see BATCH_PACKETS

    # -- in -------------------------------------------------------------------------------------
    def received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """The per-packet path, taken synchronously (no queue, no task switch): the audio
        gate and the jitter buffer need no awaiting. ``addr`` is (host, port), and two more
        fields from an IPv6 socket: compiled, the annotation is checked."""
        peer = self.peer
        if addr != peer and (  # the peer's very address (IPv4) is one comparison
            peer is None
            or addr[1] != peer[1]
            or (peer[0] not in ANY_ADDRESS and addr[0] != peer[0])
        ):
            self.strangers += 1
            if self.strangers == 1:
                log.warning("call %s: RTP from an unexpected address dropped", self.name)
            return
        session = self.session
        if session is None or self.closed:
            if self.closed:
                return
            if len(self.early) < MAX_EARLY_PACKETS:
                self.early.append(data)
            else:
                self.early_dropped += 1
            return
        self.packets += 1
        batch = self._batch
        batch.append(data)
        if (
            len(batch) >= BATCH_PACKETS
            or self.playback is not None  # prompt frames go out as the caller's packets come
            or self.media_base_ms is None
            or data[1:2] != _IN_STREAM_AUDIO
        ):
            self.catch_up()

    def catch_up(self) -> None:
        """Take the packets waiting in the batch. The session calls it before it gives the flow
        an event (a key, a tick, a withdrawal, the end), and ``flush`` before the last frames."""
        batch = self._batch
        session = self.session
        if not batch or session is None:
            return
        self._batch = []
        base = self.media_base_ms
        jitter = self.jitter
        step = jitter.frame_ms
        last_ms = -1  # the start of the last frame taken here
        i, n = 0, len(batch)
        while i < n:
            # Nearly every packet is the next one in order: the batch is then one run, taken
            # without parsing a packet into objects; ``_take`` does the rest (and sets
            # ``media_base_ms`` at the first).
            if base is not None:
                count, first_ms = jitter.push_run(batch, i)
                if count:
                    run = [data[HEADER_BYTES:] for data in batch[i : i + count]]
                    session.audio_run(TRACK_CALLER, base + first_ms, step, run)
                    last_ms = base + first_ms + (count - 1) * step
                    i += count
                    continue
            self._take(session, batch[i])
            base = self.media_base_ms
            i += 1
        now = session.at((last_ms + FRAME_MS) / 1000) if last_ms >= 0 else session.now
        deadline = session.flow.deadline
        if (self.playback is not None or (deadline is not None and now >= deadline)) and (
            not self._pump_posted
        ):
            self._pump_posted = True
            self.wake(WAKE_PUMP, None)

    def begin(self, session: LegSession) -> None:
        """Take the call's audio into ``session`` from now on, starting with what arrived
        before it (``early``)."""
        self.session = session
        session.before_event = self.catch_up
        if self.sweeper is not None:
            self.sweeper.add(self)
        early, self.early = self.early, []
        for data in early:
            self.packets += 1
            self._take(session, data)

    def new_digit(self, digit: str, now: float) -> bool:
        """A key at call time ``now``, reported by the platform or by RFC 4733 (``WAKE_DIGIT``):
        False when it is the same key as the last one, within ``DIGIT_DEDUP_SECONDS``, which is
        the one key reported both ways."""
        last = self.last_digit
        if last and last[0] == digit and now - last[1] < DIGIT_DEDUP_SECONDS:
            return False
        self.last_digit = (digit, now)
        return True

    def _take(self, session: LegSession, data: bytes) -> None:
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            self.malformed += 1
            self.jitter.stats.malformed += 1
            if self.malformed == 1:
                log.warning("call %s: malformed RTP dropped: %s", self.name, exc)
            return
        kind = classify(packet)
        if kind == "dtmf":
            with contextlib.suppress(ValueError):
                event = parse_telephone_event(packet.payload)
                # One packet can close two digits when end packets were lost.
                for digit in self.dtmf.feed(packet.timestamp, event) or "":
                    self.wake(WAKE_DIGIT, digit)
            return
        if kind != "audio":
            return
        if self.media_base_ms is None:
            self.media_base_ms = int(session.call_time() * 1000)
        for frame in self.jitter.push(packet):
            session.audio(TRACK_CALLER, self.media_base_ms + frame.timestamp_ms, frame.payload)
            session.at((self.media_base_ms + frame.timestamp_ms + FRAME_MS) / 1000)

    # -- out ------------------------------------------------------------------------------------
    def play(self, prompt: Prompt, play_id: int, now: float) -> None:
        self.sender.start_talkspurt()
        self.playback = PacedPrompt.start(prompt, play_id, now)

    def stop_playing(self) -> None:
        self.playback = None

    def wait_seconds(self, session: LegSession) -> float | None:
        """How long the call's task may wait for its next wake: a frame while a prompt plays
        (prompts stay paced should RTP stop arriving), else the session's timer."""
        return FRAME_MS / 1000 if self.playback is not None else session.timer()

    def pump(self, now: float) -> int | None:
        """Send the prompt frames due at call time ``now``; the prompt's play id when it has
        just finished playing."""
        self._pump_posted = False
        pb = self.playback
        transport = self.protocol.transport if self.protocol else None
        if pb is None or transport is None or self.peer is None:
            return None
        for frame in pb.due(now):
            transport.sendto(self.sender.packet(frame), self.peer)
        if not pb.finished:
            return None
        self.playback = None
        return pb.play_id

    # -- end ------------------------------------------------------------------------------------
    async def drain(self) -> None:
        """RTP that arrived before the hang-up may still sit in the socket when the platform's
        hang-up is read: let it in, until the socket has been quiet briefly."""
        for _ in range(DRAIN_ROUNDS):
            seen = self.packets
            await asyncio.sleep(DRAIN_QUIET_SECONDS)
            if self.packets == seen:
                break

    def flush(self) -> None:
        """No more audio is taken; what the jitter buffer still holds goes to the session."""
        self.catch_up()
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.discard(self)
        session = self.session
        if session is not None and self.media_base_ms is not None:
            for frame in self.jitter.flush():
                session.audio(TRACK_CALLER, self.media_base_ms + frame.timestamp_ms, frame.payload)

    async def close(self) -> None:
        """Log the leg's losses and free its port."""
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.discard(self)
        if self.session is not None:
            stats = self.jitter.stats
            log.info(
                "call %s: rtp lost %d dup %d late %d jumps %d resyncs %d strangers %d malformed %d",
                self.name,
                stats.lost,
                stats.duplicates,
                stats.late,
                stats.jumps,
                stats.resyncs,
                self.strangers,
                self.malformed,
            )
            if self.jitter.gaps:
                # Losses were filled with silence; say where, so a listener knows the quiet
                # at 12.3 s is missing audio and not the caller's: the network's, or
                # Asterisk's own while it handled a key (docs/asterisk.md, the counters).
                log.info(
                    "call %s: silence filled for lost RTP at %s",
                    self.name,
                    ", ".join(f"{start}+{length} ms" for start, length in self.jitter.gaps[:20]),
                )
        if self.protocol and self.protocol.transport:
            self.protocol.transport.close()
            # The socket closes on the loop's next pass: wait for it, so that the port is free
            # again by the time the call is gone (a new call may bind it at once).
            await self.protocol.closed

    def release(self) -> None:
        """Break the leg's reference cycles once its call is over and counted: its port calls
        back the leg and the leg holds its port; the leg holds the session, whose
        ``before_event`` is the leg's; ``wake`` is a method of the call's. Left to the collector,
        a finished call waited for a pass over older objects, which at ``ivr serve``'s
        thresholds comes after thousands of calls (``tests/test_stream_memory.py``)."""
        port = self.protocol
        if port is not None:
            port.transport = None
        self.protocol = None
        self.session = None
        self.wake = _no_wake

    def counters(self) -> dict[str, int]:
        """The leg's losses, to sum into the platform's counters (docs/asterisk.md, /healthz):
        ``rtp_lost`` and ``rtp_frames_lost`` (two documented names of the same count: frames
        filled with silence), wild packets dropped (``rtp_jumps``), resyncs, malformed packets,
        packets from strangers, and packets beyond ``MAX_EARLY_PACKETS`` before the session.
        Only what is not zero, except ``rtp_lost`` once the leg has carried a call's audio (so
        that counter is shown from the first call on)."""
        stats = self.jitter.stats
        counts = {
            "rtp_frames_lost": stats.lost,
            "rtp_jumps": stats.jumps,
            "rtp_resyncs": stats.resyncs,
            "rtp_malformed": self.malformed,
            "rtp_strangers": self.strangers,
            "rtp_early_dropped": self.early_dropped,
        }
        out = {name: value for name, value in counts.items() if value}
        if self.session is not None:
            out["rtp_lost"] = stats.lost
        return out
