"""The call driver's registry and dispatcher: a call's life the same on every platform."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ivr.calls import Call, CallRegistry, carry_out
from ivr.calls.registry import EXPIRY_MARGIN_SECONDS
from ivr.calls.session import NEAR_DEADLINE_SECONDS, TICK_GRACE_SECONDS
from ivr.config import load_config
from ivr.consent import DigitPressed, PromptFinished
from ivr.prompt_library import PromptLibrary
from media.prompts import Prompt
from storage.errors import VaultWriteError
from storage.format import FormatError
from storage.vault import Vault

CONSENT_LINE = "+15550100001"  # the demo's opt-in line, forwarded to an agent
MESSAGE_LINE = "+15550100005"  # opt-in, Swedish, no agent
NOTICE_LINE = "+15550100003"  # told, then recorded up to the service's maximum (an hour)
PLATFORM = "asterisk"  # a platform the demo lines are served on: the prompts are its own


class Clock:
    """Wall time the test moves by hand: nothing here waits in real time."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


class RecordingWire:
    """A platform that writes down what it was asked to do."""

    def __init__(self) -> None:
        self.done: list[tuple[str, object]] = []

    async def play(self, prompt: Prompt, play_id: int) -> None:
        self.done.append(("play", prompt.id))

    async def stop_playing(self) -> None:
        self.done.append(("stop", None))

    async def hand_off(self, recording: bool) -> None:
        self.done.append(("hand_off", recording))

    async def hang_up(self, reason: str) -> None:
        self.done.append(("hang_up", reason))


@pytest.fixture
async def registry(tmp_path, monkeypatch, prompt_cache):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    config = load_config(None)
    clock = Clock()
    vault = Vault(tmp_path, fsync=False, clock=clock)
    prompts = PromptLibrary.load(config, prompt_cache)
    reg = CallRegistry(vault, prompts, clock=clock, monotonic=clock.monotonic)
    reg.config = config  # type: ignore[attr-defined]
    reg.test_clock = clock  # type: ignore[attr-defined]
    yield reg
    await reg.finish_all("test over")
    vault.close()


async def open_call(
    registry: CallRegistry, number: str, sid: str = "CA1", platform: str = PLATFORM
) -> Call:
    line = registry.config.line_for(number)  # type: ignore[attr-defined]
    return await registry.open(
        platform=platform, platform_call_id=sid, line=line, caller="+46701234567"
    )


def row(registry: CallRegistry, call: Call):
    return registry.vault.catalog.call(call.call_id)


async def test_a_call_is_registered_found_and_finished_once(registry):
    call = await open_call(registry, CONSENT_LINE)
    assert registry.get(PLATFORM, "CA1") is call and len(registry) == 1
    assert registry.get("other", "CA1") is None  # ids are per platform
    session = registry.begin(call)
    wire = RecordingWire()
    await carry_out(call, wire, await session.start())
    assert wire.done == [("play", "consent_request")]
    await carry_out(call, wire, await session.handle(DigitPressed(at=session.at(1.0), digit="1")))
    # However many report the end at once, it is written once, with the first reason.
    rows = await asyncio.gather(
        registry.finish(call, "caller hung up"),
        registry.finish(call, "service shutting down"),
        registry.finish(call, "caller hung up again"),
    )
    assert rows[0] is not None and rows[0] is rows[1] is rows[2]
    assert rows[0].status.value == "complete"
    assert len(registry) == 0 and call.finished
    saved = row(registry, call)
    assert saved["outcome"] == "accepted" and saved["end_reason"] == "caller hung up"
    assert saved["ended_at"]


async def test_a_call_plays_the_prompts_of_its_line_on_its_platform(registry):
    """The opening prompt names the withdraw channel the call's own platform honours: keys on
    Asterisk; on Twilio, where no key reaches us after the hand-off, the agent."""
    heard = {}
    for n, platform in enumerate(("asterisk", "twilio")):
        call = await open_call(registry, CONSENT_LINE, sid=f"CA{n}", platform=platform)
        session = registry.begin(call)
        heard[platform] = session.prompts["consent_request"]
        assert session.prompts == registry.prompts.for_call(call.line, platform)
    assert "press star at any time to stop the recording" in heard["asterisk"].text
    assert "tell the person you speak with" in heard["twilio"].text
    assert heard["asterisk"].sha256 != heard["twilio"].sha256
    # The evidence's words and hash are those of the audio played.
    evidence = registry.prompts.texts(call.line, "twilio")
    assert evidence["consent_request"] == heard["twilio"].text


async def test_calls_on_a_line_share_what_their_flows_are_told_of_its_prompts(registry):
    """Made once by the prompt library, not per call; the same as made from the prompts."""
    from ivr.prompt_library import prompt_infos

    flows = []
    for n in range(2):
        call = await open_call(registry, CONSENT_LINE, sid=f"CA{n}", platform="twilio")
        flows.append(registry.begin(call).flow)
    assert flows[0].prompts is flows[1].prompts
    assert dict(flows[0].prompts) == prompt_infos(registry.prompts.for_call(call.line, "twilio"))
    with pytest.raises(TypeError):  # shared, so no call can change another's
        flows[0].prompts["consent_request"] = flows[0].prompts["consent_request"]  # type: ignore[index]


async def test_a_platform_the_line_is_not_served_on_has_no_prompts(registry):
    call = await open_call(registry, CONSENT_LINE, platform="nowhere")
    with pytest.raises(LookupError, match="no prompts for line"):
        registry.begin(call)
    await registry.finish(call, "test over")


async def test_a_hang_up_by_the_flow_is_the_reason_and_tells_the_platform(registry):
    call = await open_call(registry, MESSAGE_LINE)
    session = registry.begin(call)
    wire = RecordingWire()
    await carry_out(call, wire, await session.start())
    await carry_out(call, wire, await session.handle(DigitPressed(at=session.at(1.0), digit="9")))
    await carry_out(call, wire, await session.handle(PromptFinished(at=session.at(4.0), play_id=2)))
    assert ("hand_off", False) in wire.done
    # A message line whose caller refused: the platform hangs up; that reason stays first.
    await carry_out(call, wire, await session.tick(session.at(4.0)))
    call.ended_by("service hung up: nothing to record")
    await registry.finish(call, "caller hung up (cause 16)")
    assert row(registry, call)["end_reason"] == "service hung up: nothing to record"
    assert row(registry, call)["outcome"] == "declined"


async def test_a_call_that_never_began_is_a_set_up_failure_or_a_hang_up(registry):
    failed = await open_call(registry, CONSENT_LINE, "CA-failed")
    failed.setup_error = "no RTP port free"
    failed.ended_by("set-up failed: no RTP port free")
    await registry.finish(failed, "call task ended")
    assert row(registry, failed)["outcome"] == "setup_failed"
    assert row(registry, failed)["end_reason"] == "set-up failed: no RTP port free"
    gone = await open_call(registry, CONSENT_LINE, "CA-gone")
    await registry.finish(gone, "caller hung up")
    assert row(registry, gone)["outcome"] == "hung_up"


async def test_calls_nothing_feeds_are_forgotten_after_their_line_could_have_ended(registry):
    clock = registry.test_clock
    quiet = await open_call(registry, CONSENT_LINE, "CA-quiet")
    fed = await open_call(registry, CONSENT_LINE, "CA-fed")
    fed.attached = 1  # a stream still feeds it
    talking = await open_call(registry, CONSENT_LINE, "CA-talking")
    for call in (quiet, fed, talking):
        registry.begin(call)
    limit = quiet.line.max_recording_seconds + EXPIRY_MARGIN_SECONDS
    clock.advance(limit - 1)
    registry.heard(talking)  # the platform said something just now
    assert await registry.expire() == 0
    clock.advance(2)
    assert await registry.expire() == 1
    assert quiet.finished and not fed.finished and not talking.finished
    assert row(registry, quiet)["end_reason"] == "no word from the platform; call forgotten"
    assert row(registry, quiet)["outcome"] == "hung_up"  # it never got past the question


async def test_a_leg_feeds_the_call_until_it_detaches_and_a_lost_leg_ends_its_media(registry):
    call = await open_call(registry, CONSENT_LINE)
    session = registry.begin(call)
    consent, recording = RecordingWire(), RecordingWire()
    call.attach(consent, "consent")
    call.attach(recording, "recording")
    assert (
        call.attached == 2
        and call.wire is recording
        and call.streams
        == {
            "consent",
            "recording",
        }
    )
    await call.detach(consent, lost=None)  # an earlier leg going away leaves the current one
    assert call.attached == 1 and call.wire is recording and not session.ended
    await call.detach(recording, lost="recording stream lost")
    assert call.attached == 0 and call.wire is None
    assert session.ended and call.end_reason == "recording stream lost"
    await call.media_ended("caller hung up")  # a later word changes nothing: the first cause
    assert call.end_reason == "recording stream lost"
    assert not call.finished  # the row is the platform's goodbye's (or expiry's) to write


async def test_the_timer_rule(registry):
    call = await open_call(registry, CONSENT_LINE)
    session = registry.begin(call)
    assert session.timer() is None  # no deadline before the call starts
    await session.start()
    await session.handle(
        PromptFinished(at=session.at(13.4), play_id=1)
    )  # the question played: 8 s to answer
    deadline = session.flow.deadline
    assert deadline is not None
    # The wall clock has not moved: the timer covers the whole wait, and a little more.
    assert session.timer() == pytest.approx(deadline - 13.4 + 0.05)
    registry.test_clock.advance(deadline)  # wall time now past the deadline
    assert session.timer() == pytest.approx(0.05)
    assert session.now_event() >= deadline  # an event now happens at wall time


async def test_a_far_deadline_is_worked_out_once_until_call_time_could_near_it(registry):
    """While the deadline is far, ``timer()`` answers "none" without reading the wall clock,
    until media time, the monotonic clock or the deadline itself says it may have come near."""
    call = await open_call(registry, NOTICE_LINE)
    session = registry.begin(call)
    await session.start()
    await session.handle(PromptFinished(at=session.at(12.0), play_id=1))
    deadline = session.flow.deadline
    assert deadline is not None and deadline - 12.0 > NEAR_DEADLINE_SECONDS
    reads = 0
    clock = session.clock

    def counted() -> datetime:
        nonlocal reads
        reads += 1
        return clock()

    session.clock = counted
    assert session.timer() is None and reads == 1
    for _ in range(100):  # media keeps coming, far from the deadline
        session.at(session.now + 0.02)
        assert session.timer() is None
    assert reads == 1
    # Media time within NEAR_DEADLINE_SECONDS of it: worked out again, and a timer is armed.
    session.at(deadline - NEAR_DEADLINE_SECONDS + 1.0)
    assert session.timer() == pytest.approx(NEAR_DEADLINE_SECONDS - 1.0 + TICK_GRACE_SECONDS)
    assert reads == 2
    # The same by the monotonic clock alone, on a fresh call with no media at all.
    other = registry.begin(await open_call(registry, NOTICE_LINE, sid="CA2"))
    await other.start()
    await other.handle(PromptFinished(at=other.at(12.0), play_id=1))
    far = other.flow.deadline
    assert far is not None and other.timer() is None
    registry.test_clock.advance(far - NEAR_DEADLINE_SECONDS + 1.0)
    assert other.timer() is not None  # the wall clock moved with the monotonic one


async def test_rows_a_dead_process_left_open_are_closed_and_named(registry):
    clock = registry.test_clock
    data_dir = registry.vault.data_dir
    # Two other processes on the same catalog: one died with a call open, one still runs.
    with Vault(data_dir, fsync=False, clock=clock, recover=False) as dead:
        old = dead.open_call(tenant="demo", platform=PLATFORM, platform_call_id="CA-old")
    running = Vault(data_dir, fsync=False, clock=clock, recover=False)
    try:
        theirs = running.open_call(tenant="demo", platform=PLATFORM, platform_call_id="CA-run")
        clock.advance(60)
        started = clock()
        clock.advance(1)
        current = await open_call(registry, CONSENT_LINE, "CA-now")
        assert await registry.close_orphans(PLATFORM, started) == ["CA-old"]
        assert row(registry, current)["ended_at"] is None  # this process's call is left alone
        assert registry.vault.catalog.call(theirs)["ended_at"] is None  # and the running one's
    finally:
        running.close()
    gone = registry.vault.catalog.call(old)
    assert gone["ended_at"] and gone["outcome"] == "interrupted"
    assert gone["end_reason"] == "the service stopped during the call; closed at the next start"
    assert await registry.close_orphans("other", started) == []


def test_a_prompt_is_paced_by_call_time():
    from ivr.calls.playback import PacedPrompt

    frames = tuple(bytes([i]) * 160 for i in range(5))
    prompt = PacedPrompt(play_id=1, frames=frames, started_at=10.0)
    assert prompt.due(9.99) == ()  # not before its slot
    assert prompt.due(10.0) == frames[:1]  # one ahead of call time
    assert prompt.due(10.0) == ()
    assert prompt.due(10.05) == frames[1:3]  # a late wake-up sends what it missed
    assert not prompt.finished and prompt.remaining == 2
    assert prompt.due(11.0) == frames[3:] and prompt.finished and prompt.remaining == 0
    assert prompt.frames is frames  # walked, not copied


def test_every_call_playing_a_prompt_shares_its_frames():
    from ivr.calls.playback import PacedPrompt, shared_frames

    prompt = Prompt("p", "en", "t", bytes(range(160)) * 16, "", 320, "test")
    one, two = PacedPrompt.start(prompt, 1, 0.0), PacedPrompt.start(prompt, 2, 5.0)
    assert one.frames is two.frames is shared_frames(prompt)
    assert b"".join(one.due(1.0))[: len(prompt.ulaw)] == prompt.ulaw


async def test_the_call_clock_starts_when_the_caller_can_hear_us_and_set_up_is_kept_apart(
    registry,
):
    clock = registry.test_clock  # type: ignore[attr-defined]
    call = await open_call(registry, CONSENT_LINE)  # the platform announces the call
    clock.advance(3.0)  # its media takes 3 s to connect
    session = registry.begin(call)
    wire = RecordingWire()
    await carry_out(call, wire, await session.start())
    evidence = session.flow.evidence()
    assert evidence.setup_seconds == 3.0
    # The opening prompt started when the caller could first hear us: the call clock's zero.
    assert evidence.call_started_at == "2026-11-30T12:00:03.000000Z"
    assert evidence.prompt_started_at == evidence.call_started_at


async def test_the_agent_withdraws_through_the_driver_on_any_platform(registry):
    from ivr.calls import NotWithdrawable, withdraw_for_caller

    call = await open_call(registry, CONSENT_LINE)
    session = registry.begin(call)
    call.wire = wire = RecordingWire()
    await carry_out(call, wire, await session.start())
    with pytest.raises(NotWithdrawable, match="nothing is being recorded"):
        await withdraw_for_caller(call, "agent")
    await carry_out(call, wire, await session.handle(DigitPressed(at=session.at(1.0), digit="1")))
    assert session.recording_allowed
    withdrawn = await withdraw_for_caller(call, "agent")
    assert withdrawn.recording is not None and withdrawn.recording.status.value == "discarded"
    # Asterisk can still play to the caller after the hand-off: the notice is played.
    assert wire.done[-1] == ("play", "recording_stopped")
    assert not session.recording_allowed


async def test_the_flow_hears_of_an_event_only_after_the_audio_that_came_before_it(registry):
    # A withdrawal (here the agent's, through the API) while audio waits in an RTP leg's batch
    # (ivr/calls/rtp.py BATCH_PACKETS): that audio arrived while recording was allowed and is
    # stored; audio after it is refused.
    from ivr.calls import withdraw_for_caller
    from ivr.calls.rtp import RtpLeg
    from media.rtp import RtpSender

    call = await open_call(registry, CONSENT_LINE)
    session = registry.begin(call)
    call.wire = wire = RecordingWire()
    await carry_out(call, wire, await session.start())
    await carry_out(call, wire, await session.handle(DigitPressed(at=session.at(1.0), digit="1")))
    assert session.recording_allowed and session.recording is not None
    peer = ("127.0.0.1", 4000)
    one = RtpLeg(lambda kind, value: None, name=call.call_id)
    one.peer = peer
    one.begin(session)
    sender = RtpSender()
    for n in range(4):
        one.received(sender.packet(bytes([n]) * 160), peer)
    # The first is held by the jitter buffer (its window), the other three wait in the batch.
    assert session.stats.frames_stored == 0
    await withdraw_for_caller(call, "agent")
    assert session.stats.frames_stored == 4
    for n in range(3):
        one.received(sender.packet(bytes([n]) * 160), peer)
    one.flush()
    assert (session.stats.frames_stored, session.stats.frames_refused) == (4, 3)


class FailingSink:
    """A blob that takes ``good`` chunks, then fails every write (a full disk)."""

    def __init__(self, sink, good: int) -> None:
        self.sink, self.good = sink, good

    def write(self, data: bytes) -> None:
        if self.good <= 0:
            raise VaultWriteError("disk full")
        self.good -= 1
        self.sink.write(data)


@pytest.mark.parametrize(
    "case", ["before consent", "chunks", "before the first frame", "past the maximum", "disk full"]
)
async def test_audio_in_runs_is_audio_frame_by_frame(registry, case):
    # Two calls on the same line given the same frames, one through ``audio`` frame by frame,
    # the other through ``audio_run`` in runs of 10 (as an RTP leg gives them): the same
    # counters, and the same frames in the recording.
    calls, sessions = [], []
    for sid in ("CA1", "CA2"):
        call = await open_call(registry, MESSAGE_LINE, sid=sid)
        session = registry.begin(call)
        await carry_out(call, RecordingWire(), await session.start())
        if case != "before consent":
            await session.handle(DigitPressed(at=session.at(1.0), digit="1"))
            assert session.recording is not None
        if case == "past the maximum":
            session._max_offset_ms = 2_000
        if case == "disk full":
            writer = session.recording._writer
            writer._sink = FailingSink(writer._sink, good=1)
        calls.append(call)
        sessions.append(session)
    start = 2_000
    if case == "before the first frame":
        for session in sessions:  # the recording starts here; runs below start 100 ms before
            session.audio(0, start + 100, b"\x7f" * 160)
    payloads = [bytes([n % 256]) * 160 for n in range(300)]  # 6 s: chunks sealed on the way
    for i, payload in enumerate(payloads):
        sessions[0].audio(0, start + 20 * i, payload)
    for i in range(0, len(payloads), 10):
        sessions[1].audio_run(0, start + 20 * i, 20, payloads[i : i + 10])
    one, other = sessions
    assert other.stats == one.stats
    assert one.stats.frames_stored + one.stats.frames_refused + one.stats.frames_lost >= 300
    stored = []
    for call, session in zip(calls, sessions, strict=True):
        rid = session.recording.id if session.recording else None
        await registry.finish(call, "caller hung up")
        if rid is None or session.stats.frames_stored == 0:
            stored.append([])
            continue
        frames = []
        with registry.vault.open_reader(rid) as reader:
            try:
                for f in reader.frames():
                    frames.append((f.track, f.timestamp_ms, f.payload))
            except FormatError:  # the disk filled: the blob ends without its final chunk
                assert case == "disk full"
        stored.append(frames)
    assert stored[1] == stored[0]
    # Frames counted as stored, and frames in the blob: with a full disk the second chunk's
    # write fails, and its frames, taken by the writer, are counted as lost, not stored.
    expected = {
        "before consent": (0, 0),
        "chunks": (300, 300),
        "before the first frame": (301, 301),
        "past the maximum": (101, 101),  # 0 to 2,000 ms
        "disk full": (50, 50),
    }[case]
    assert (one.stats.frames_stored, len(stored[0])) == expected


async def test_a_last_chunk_the_disk_refuses_at_the_close_is_counted_as_lost(registry):
    call = await open_call(registry, MESSAGE_LINE)
    session = registry.begin(call)
    await carry_out(call, RecordingWire(), await session.start())
    await session.handle(DigitPressed(at=session.at(1.0), digit="1"))
    rec = session.recording
    rec._writer._sink = FailingSink(rec._writer._sink, good=1)
    for i in range(60):  # 1.2 s: the first second is written when frame 50 comes
        session.audio(0, 2_000 + 20 * i, bytes([i]) * 160)
    assert (session.stats.frames_stored, session.stats.frames_lost) == (60, 0)
    await registry.finish(call, "caller hung up")  # the last chunk's write fails
    assert (session.stats.frames_stored, session.stats.frames_lost) == (50, 10)
    assert row(registry, call)["ended_at"]
