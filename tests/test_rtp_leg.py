"""ivr/calls/rtp.py's RtpLeg on its own: what it adds to a platform's counters, keys reported
twice, how long the call's task may wait, the drain before a call's end, and audio taken in
batches (that the flow hears of an event only after the audio before it: test_call_registry.py).
The leg's packets,
prompts and ports are exercised through Asterisk (tests/test_asterisk_e2e.py, test_rtp_jumps.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from ivr.calls import rtp
from ivr.calls.playback import FRAME_MS
from ivr.calls.rtp import DIGIT_DEDUP_SECONDS, DRAIN_QUIET_SECONDS, DRAIN_ROUNDS, RtpLeg
from ivr.calls.session import CallSession
from media.prompts import Prompt


class FakeSession:
    def __init__(self, timer: float | None) -> None:
        self._timer = timer

    def timer(self) -> float | None:
        return self._timer


def session(timer: float | None = None) -> CallSession:
    return cast(CallSession, FakeSession(timer))


def leg() -> RtpLeg:
    return RtpLeg(lambda kind, value: None, name="t")


def test_counters_are_the_losses_not_zero_and_rtp_lost_once_the_leg_had_a_session():
    fresh = leg()
    assert fresh.counters() == {}
    fresh.strangers = 2  # a call whose set-up failed may still have seen strangers
    assert fresh.counters() == {"rtp_strangers": 2}
    fresh.session = session()
    assert fresh.counters() == {"rtp_strangers": 2, "rtp_lost": 0}
    stats = fresh.jitter.stats
    stats.lost, stats.jumps, stats.resyncs, fresh.malformed = 3, 4, 5, 6
    assert fresh.counters() == {
        "rtp_lost": 3,  # both names of the frames filled with silence (docs/asterisk.md)
        "rtp_frames_lost": 3,
        "rtp_jumps": 4,
        "rtp_resyncs": 5,
        "rtp_malformed": 6,
        "rtp_strangers": 2,
    }


def test_a_key_reported_both_ways_counts_once():
    one = leg()
    assert one.new_digit("1", 10.0)
    assert not one.new_digit("1", 10.0 + DIGIT_DEDUP_SECONDS / 2)  # the other report of it
    assert one.new_digit("1", 10.0 + DIGIT_DEDUP_SECONDS)  # pressed again
    assert one.new_digit("2", 10.0 + DIGIT_DEDUP_SECONDS + 0.01)  # another key at once
    assert one.new_digit("1", 10.0 + DIGIT_DEDUP_SECONDS + 0.02)


def test_the_task_waits_a_frame_while_a_prompt_plays_else_the_sessions_timer():
    one = leg()
    assert one.wait_seconds(session(None)) is None
    assert one.wait_seconds(session(2.5)) == 2.5
    ulaw = b"\xff" * 1600
    one.play(Prompt("p", "en", "p", ulaw, "", 200, "test"), play_id=1, now=0.0)
    assert one.wait_seconds(session(None)) == FRAME_MS / 1000
    one.stop_playing()
    assert one.wait_seconds(session(2.5)) == 2.5


@pytest.mark.parametrize(("busy_rounds", "sleeps"), [(0, 1), (3, 4), (50, DRAIN_ROUNDS)])
async def test_drain_waits_until_the_socket_is_quiet_and_no_longer(busy_rounds, sleeps):
    one = leg()
    slept: list[float] = []

    async def sleep(seconds: float, *args: Any) -> None:
        slept.append(seconds)
        if len(slept) <= busy_rounds:
            one.packets += 1  # RTP still arriving during this pause

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rtp.asyncio, "sleep", sleep)
        await one.drain()
    assert slept == [DRAIN_QUIET_SECONDS] * sleeps


class TakingSession:
    """A session that writes down the audio frames it is given."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.now = 0.0
        self.flow = type("Flow", (), {"deadline": None})()

    def call_time(self) -> float:
        return 0.0

    def audio(self, track: int, call_ms: int, payload: bytes) -> None:
        self.frames.append((call_ms, payload))

    def audio_run(self, track: int, call_ms: int, step_ms: int, payloads: list[bytes]) -> None:
        self.frames += [(call_ms + i * step_ms, p) for i, p in enumerate(payloads)]

    def at(self, call_time: float) -> float:
        self.now = max(self.now, call_time)
        return self.now


async def test_audio_before_the_session_starts_is_kept_for_it_up_to_a_second():
    from media.rtp import RtpSender as Sender

    peer = ("127.0.0.1", 4000)
    one = leg()
    one.peer = peer
    sender = Sender()
    packets = [sender.packet(bytes([n]) * 160) for n in range(rtp.MAX_EARLY_PACKETS + 3)]
    for packet in packets[:5]:  # the bridge carries audio before set-up hears it was made
        one.received(packet, peer)
    assert one.packets == 0 and len(one.early) == 5
    taking = TakingSession()
    one.begin(cast(CallSession, taking))
    assert one.packets == 5 and one.early == []
    one.received(packets[5], peer)
    one.flush()
    assert [payload[0] for _, payload in taking.frames] == [0, 1, 2, 3, 4, 5]
    assert [ms for ms, _ in taking.frames] == [0, 20, 40, 60, 80, 100]

    stuck = leg()
    stuck.peer = peer
    for packet in packets:
        stuck.received(packet, peer)
    assert len(stuck.early) == rtp.MAX_EARLY_PACKETS and stuck.early_dropped == 3
    assert stuck.counters() == {"rtp_early_dropped": 3}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_port_in_use_is_skipped_on_either_event_loop(loop: str) -> None:
    """Another program's socket on a port of the range: the next port is taken. uvloop reports
    a port in use without an errno when it binds; ours is bound before the loop sees it."""
    import asyncio
    import errno
    import socket

    from ivr.serving import loop_factory

    while True:  # a port held here, with the one after it free
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                taken.close()

    async def bind_two() -> tuple[int, OSError]:
        ports = rtp.PortRange("127.0.0.1", port, port + 1)
        first = leg()
        bound = await ports.bind(first)
        try:
            with pytest.raises(OSError) as full:  # the one free port is ours now
                await ports.bind(leg())
        finally:
            assert first.protocol is not None and first.protocol.transport is not None
            first.protocol.transport.close()
        return bound, full.value

    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)[1]) as runner:
            bound, full = runner.run(bind_two())
    finally:
        taken.close()
    assert bound == port + 1
    assert full.errno == errno.EADDRINUSE and f"{port}-{port + 1} are in use" in str(full)


# --- audio taken in batches -----------------------------------------------------------------


async def test_a_batch_is_taken_when_full_and_a_key_takes_it_first_in_order():
    from media.dtmf import build_telephone_event
    from media.rtp import RtpPacket, RtpSender, build_rtp

    peer = ("127.0.0.1", 4000)
    seen: list[object] = []
    one = RtpLeg(lambda kind, value: seen.append((kind, value)), name="t")
    one.peer = peer
    taking = TakingSession()
    taking.audio = lambda track, ms, payload: seen.append(payload[0])  # type: ignore[method-assign]
    taking.audio_run = lambda track, ms, step, run: seen.extend(p[0] for p in run)  # type: ignore[method-assign]
    one.begin(cast(CallSession, taking))
    sender = RtpSender()
    audio = [sender.packet(bytes([n]) * 160) for n in range(rtp.BATCH_PACKETS + 4)]
    for packet in audio[: rtp.BATCH_PACKETS]:
        one.received(packet, peer)
    # The first packet (a marker) is taken at once and held by the jitter buffer until three
    # more are in (its window); those wait in the batch, and so nothing has come out yet.
    assert seen == []
    one.received(audio[rtp.BATCH_PACKETS], peer)
    assert seen == list(range(rtp.BATCH_PACKETS + 1))
    seen.clear()
    for packet in audio[rtp.BATCH_PACKETS + 1 :]:
        one.received(packet, peer)
    assert seen == []
    # The end of key 5 as RFC 4733 (three end packets, as senders do): the audio before it
    # is taken first, then the key is reported.
    event = build_telephone_event(5, True, 10, 800)
    key = RtpPacket(101, sender.sequence, sender.timestamp, sender.ssrc, False, event)
    one.received(build_rtp(key), peer)
    waiting = [rtp.BATCH_PACKETS + 1, rtp.BATCH_PACKETS + 2, rtp.BATCH_PACKETS + 3]
    assert seen == [*waiting, (rtp.WAKE_DIGIT, "5")]


async def test_a_batch_is_taken_by_the_sweeper_when_the_callers_audio_stops():
    from media.rtp import RtpSender

    peer = ("127.0.0.1", 4000)
    sweeper = rtp.BatchSweeper(period=3600)  # swept by hand below, not by its timer
    one = RtpLeg(lambda kind, value: None, name="t", sweeper=sweeper)
    one.peer = peer
    taking = TakingSession()
    one.begin(cast(CallSession, taking))
    sender = RtpSender()
    for n in range(5):  # the first, then four that wait in the batch
        one.received(sender.packet(bytes([n]) * 160), peer)
    sweeper.sweep()  # the batch may have just begun: it is left to fill
    assert taking.frames == []
    sweeper.sweep()  # still the same batch, a whole period later: taken
    assert [payload[0] for _, payload in taking.frames] == [0, 1, 2, 3, 4]
    # A flowing stream: each batch is taken when full, between two sweeps, so a sweep finds a
    # batch it has not seen before and leaves it.
    for _ in range(3):
        for n in range(rtp.BATCH_PACKETS):
            one.received(sender.packet(bytes([n]) * 160), peer)
        one.received(sender.packet(b"\x99" * 160), peer)  # the next batch's first packet
        taken = len(taking.frames)
        sweeper.sweep()
        assert len(taking.frames) == taken
    one.flush()
    sweeper.sweep()  # a leg that has ended is no longer swept
    assert len(taking.frames) == 5 + 3 * (rtp.BATCH_PACKETS + 1)


@pytest.mark.parametrize("phase", range(5))
async def test_at_its_real_period_the_sweeper_leaves_a_flowing_streams_batches_to_fill(phase):
    """Packets every FRAME_MS and a sweep every BATCH_SECONDS / 2, at each phase between the
    two: every batch of a flowing stream is taken full, by the packet that fills it; when the
    audio stops, the last batch is taken by the second sweep after its last packet; a batch
    that fills slowly waits no longer than 1.5 BATCH_SECONDS."""
    from media.rtp import RtpSender

    peer = ("127.0.0.1", 4000)
    sweeper = rtp.BatchSweeper(period=3600)  # swept by hand below, at the real period
    one = RtpLeg(lambda kind, value: None, name="t", sweeper=sweeper)
    one.peer = peer
    taking = TakingSession()
    takes: list[tuple[str, int]] = []  # (who took a batch, how many packets it held)

    def by(who: str, act: Callable[[], object]) -> None:
        """``act``, and the batch it took, if it took one (a leg takes its batch by making a
        new one, and leaves the packets in the one it took)."""
        batch = one._batch
        act()
        if one._batch is not batch and batch:
            takes.append((who, len(batch)))

    def received(data: bytes) -> None:
        by("packet", lambda: one.received(data, peer))

    def swept() -> None:
        by("sweep", sweeper.sweep)

    one.begin(cast(CallSession, taking))
    sender = RtpSender()
    per_sweep = rtp.BATCH_PACKETS // 2  # packets between two sweeps at the real period
    assert rtp.BatchSweeper().period == per_sweep * FRAME_MS / 1000
    for n in range(phase):
        received(sender.packet(bytes([n]) * 160))
    for tick in range(200):  # 4 s of a flowing stream
        if tick % per_sweep == 0:
            swept()
        received(sender.packet(b"\x01" * 160))
    # The first packets go one by one, until the jitter buffer has the stream's start; then
    # each batch is taken by its tenth packet.
    whole = [take for take in takes if take[1] > 1]
    assert len(whole) >= 200 // rtp.BATCH_PACKETS - 2
    assert set(whole) == {("packet", rtp.BATCH_PACKETS)}
    takes.clear()
    left = len(one._batch)
    swept()
    assert takes == []  # it may have just begun
    swept()
    assert takes == ([("sweep", left)] if left else [])
    # A slow stream, a packet per sweep: taken at the third sweep that sees it.
    takes.clear()
    for _ in range(6):
        received(sender.packet(b"\x02" * 160))
        swept()
    assert takes == [("sweep", 3), ("sweep", 3)]


async def test_the_sweeper_runs_while_a_leg_takes_audio_and_stops_when_none_does():
    import asyncio

    from media.rtp import RtpSender

    peer = ("127.0.0.1", 4000)
    sweeper = rtp.BatchSweeper(period=0.001)
    one = RtpLeg(lambda kind, value: None, name="t", sweeper=sweeper)
    one.peer = peer
    taking = TakingSession()
    one.begin(cast(CallSession, taking))
    sender = RtpSender()
    sent = 0
    while not one._batch:  # the stream's first packets are taken one by one, then batched
        sent += 1
        assert sent < rtp.BATCH_PACKETS
        one.received(sender.packet(bytes([sent]) * 160), peer)
    batch = one._batch

    async def until(done: Callable[[], bool]) -> None:
        while not done():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(until(lambda: one._batch is not batch), 30)  # only a sweep takes it
    assert one.jitter.stats.received == sent  # into the jitter buffer
    one.flush()
    # The sweep after the leg left is the last one.
    await asyncio.wait_for(until(lambda: sweeper._timer is None), 30)


def test_audio_is_let_in_only_from_the_announced_peer():
    from media.rtp import RtpSender

    sender = RtpSender()
    cases = [  # (the peer announced, where a packet came from, let in)
        (("127.0.0.1", 4000), ("127.0.0.1", 4000), True),
        (("127.0.0.1", 4000), ("127.0.0.2", 4000), False),  # another host
        (("127.0.0.1", 4000), ("127.0.0.1", 4001), False),  # another port
        (("0.0.0.0", 4000), ("10.1.2.3", 4000), True),  # any host, this port
        (("0.0.0.0", 4000), ("10.1.2.3", 4001), False),
        (("::1", 4000), ("::1", 4000, 0, 0), True),  # IPv6 addresses carry two more fields
        (("::1", 4000), ("::2", 4000, 0, 0), False),
        (None, ("127.0.0.1", 4000), False),  # no peer announced yet
    ]
    for peer, source, let_in in cases:
        one = leg()
        one.peer = peer
        one.received(sender.packet(bytes(160)), source)
        assert (len(one.early), one.strangers) == ((1, 0) if let_in else (0, 1)), (peer, source)


async def test_a_sweep_goes_on_past_a_call_whose_batch_cannot_be_taken(caplog):
    from media.rtp import RtpSender

    peer = ("127.0.0.1", 4000)
    sweeper = rtp.BatchSweeper(period=3600)
    legs, sessions = [], []
    for name in ("broken", "fine"):
        one = RtpLeg(lambda kind, value: None, name=name, sweeper=sweeper)
        one.peer = peer
        session = TakingSession()
        one.begin(cast(CallSession, session))
        legs.append(one)
        sessions.append(session)
    sessions[0].audio_run = None  # type: ignore[assignment]  # a bug: calling it raises
    sender = RtpSender()
    for one in legs:
        for n in range(5):
            one.received(sender.packet(bytes([n]) * 160), peer)
    sweeper.sweep()
    sweeper.sweep()
    assert len(sessions[1].frames) == 5  # taken all the same
    assert "call broken: taking its RTP batch failed" in caplog.text
