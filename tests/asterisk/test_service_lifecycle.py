"""The service's life on a real Asterisk: the agent leg, stopping, crashing, a PBX restart,
and two service instances on one PBX."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from ivr.platforms.asterisk import ari
from tests.asterisk.checks import (
    assert_only_parties,
    find_in_recording,
    found_in_stream,
    heard,
    norm,
)
from tests.asterisk.conftest import Phones
from tests.asterisk.driver import Driver
from tests.asterisk.pbx import Asterisk
from tests.asterisk.service import CALLER, CONSENT_LINE, MESSAGE_LINE, Service
from tests.asterisk.sip import FRAME_MS, RtpPeer

LATE = 0.6  # s, as in test_consent_modes


async def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll a condition outside the service (Asterisk's state), in a thread, bounded."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def nothing_left(pbx: Asterisk) -> None:
    await wait_for(lambda: pbx.leftovers() == ([], []), "Asterisk to hold no channel or bridge")


async def send(peer: RtpPeer, seconds: float) -> None:
    target = len(peer.sent) + round(seconds * 1000 / FRAME_MS)
    await peer.until(lambda: len(peer.sent) >= target, "sending", 30)


def row_of(service: Service, caller: str) -> tuple:
    """(call row, recording row or None) of the call from ``caller``."""
    with contextlib.closing(service.vault()) as vault:
        h = vault.caller_hash("demo", caller)
    calls = [r for r in service.call_rows().values() if r["caller_hash"] == h]
    assert len(calls) == 1, calls
    return calls[0], service.recording_rows().get(calls[0]["id"])


async def answered_driver(phones: Phones, line: str, caller: str) -> Driver:
    call = await phones.dial(line, caller)
    await call.wait_answered()
    return Driver(call, line.removeprefix("B"))  # "B…": the same line on the second instance


def stream_coverage(recorded: list[bytes], *parties: list) -> float:
    """The share of the recording's voiced bytes that are some party's frames."""
    stream = b"".join(norm(f) for f in recorded)
    voiced = sum(1 for b in stream if b != 0xFF)
    covered = bytearray(len(stream))
    for sent in parties:
        at = 0
        for s in sent:
            if s.index < 0:
                continue
            where = stream.find(norm(s.payload), at)
            if where >= 0:
                covered[where : where + len(s.payload)] = b"\x01" * len(s.payload)
                at = where + len(s.payload)
    hit = sum(1 for i, b in enumerate(stream) if b != 0xFF and covered[i])
    return hit / voiced if voiced else 1.0


async def test_the_agent_leg_is_heard_and_recorded(
    pbx: Asterisk, service: Service, phones: Phones
) -> None:
    agent = await phones.agents(calls=1)
    agent.rtp.talking = False  # speaks only on its turn
    d = await answered_driver(phones, CONSENT_LINE, CALLER)
    await d.accept("info")
    await agent.wait_answered()
    # Turns, with a moment of silence between, as people talk: the caller, then the agent,
    # then the caller again.
    await d.talk(1.5)
    d.call.rtp.talking = False
    await d.talk(0.3)
    agent.rtp.talking = True
    agent_from = len(agent.rtp.sent)
    await send(agent.rtp, 1.5)
    agent.rtp.talking = False
    agent_turn = agent.rtp.sent[agent_from:]
    await send(agent.rtp, 0.3)
    d.call.rtp.talking = True
    await d.talk(1.0)
    d.hang_up()
    assert await d.call.wait_ended() == "local"
    assert await agent.wait_ended() == "remote"  # the service hung up the agent's leg
    await service.wait(lambda: service.calls_in_progress() == 0, "the call to end")
    call, rec = row_of(service, CALLER)
    assert call["outcome"] == "accepted" and call["end_reason"].startswith("caller hung up")
    assert rec["status"] == "complete"
    frames = service.frames(rec["id"])
    # Before the agent joined: the caller's own frames, exactly (a two-party bridge relays).
    span = find_in_recording(frames[:50], d.call.rtp)
    assert span is not None and span.count >= 40
    # With the agent in the bridge Asterisk mixes: both parties' frames are in the stream.
    spoken = [s for s in agent_turn if s.index >= 0 and s.on_time]
    assert found_in_stream(frames, spoken) >= 0.97
    caller_after = [
        s
        for s in d.call.rtp.sent
        if s.index >= 0 and s.on_time and agent.answered_at + 0.5 < s.at < d.marks["hang_up"] - LATE
    ]
    assert found_in_stream(frames, caller_after) >= 0.97
    assert stream_coverage(frames, d.call.rtp.sent, agent.rtp.sent) >= 0.98
    # Each heard the other.
    agent_heard = [norm(r.payload) for r in agent.rtp.received]
    assert found_in_stream(agent_heard, caller_after) >= 0.97
    assert found_in_stream(heard(d.call.rtp.received), spoken) >= 0.97
    await nothing_left(pbx)


async def test_sigterm_finishes_the_recording_and_hangs_up_the_caller(
    pbx: Asterisk, service: Service, phones: Phones
) -> None:
    d = await answered_driver(phones, MESSAGE_LINE, CALLER)
    await d.accept("rfc4733")
    await d.talk(1.5)
    stopped_at = time.monotonic()
    assert await asyncio.to_thread(service.stop) == 0
    assert await d.call.wait_ended() == "remote"  # the caller got a BYE, not silence
    call, rec = row_of(service, CALLER)
    assert call["outcome"] == "accepted"
    assert call["end_reason"] == "service shutting down"
    assert rec["status"] == "complete"
    frames = service.frames(rec["id"])
    assert_only_parties(frames, d.call.rtp.sent)
    span = find_in_recording(frames, d.call.rtp)
    assert span is not None and span.last.at >= stopped_at - LATE
    await nothing_left(pbx)


async def test_sigkill_then_the_next_start_clears_what_was_left(
    pbx: Asterisk, service: Service, phones: Phones
) -> None:
    await phones.agents(calls=None)
    d = await answered_driver(phones, CONSENT_LINE, CALLER)
    await d.accept("info")
    await wait_for(
        lambda: any(c["name"].startswith("PJSIP/agent") for c in pbx.channels()), "the agent"
    )
    await d.talk(2.5)
    await asyncio.to_thread(service.kill)
    # Nobody owns the call now: the caller hears silence; our channels and bridge remain.
    channels, bridges = pbx.leftovers()
    assert len(bridges) == 1 and ari.parse_own_id(bridges[0]) is not None
    assert sum("UnicastRTP/" in c for c in channels) == 1
    assert sum("PJSIP/agent" in c for c in channels) == 1
    await d.talk(0.5)
    await asyncio.to_thread(service.start)
    # The next start hands the caller back to the dialplan (which hangs up) and clears the rest.
    assert await d.call.wait_ended() == "remote"
    await nothing_left(pbx)
    assert "error=service_restarted" in pbx.tail_log(400)
    call, rec = row_of(service, CALLER)
    assert call["ended_at"] and call["outcome"] == "interrupted"
    assert call["end_reason"] == "the service stopped during the call; closed at the next start"
    assert rec["status"] == "incomplete"  # recovered: every sealed second kept
    frames = service.frames(rec["id"])
    span = find_in_recording(frames[:50], d.call.rtp)
    assert span is not None and span.count >= 40
    assert "cleared" in service.log_text()


async def test_asterisk_restarted_mid_service(
    pbx: Asterisk, service: Service, phones: Phones
) -> None:
    d = await answered_driver(phones, MESSAGE_LINE, CALLER)
    await d.accept("info")
    await d.talk(1.0)
    await asyncio.to_thread(pbx.stop)
    assert await d.call.wait_ended() == "remote"  # Asterisk hung up as it stopped
    await asyncio.to_thread(pbx.start)
    await service.wait(
        lambda: (
            (h := service.health()) and h["asterisk"]["connections"] >= 2 and service.connected()
        ),
        "the service to reconnect",
    )
    await service.wait(lambda: service.calls_in_progress() == 0, "the lost call to be finalised")
    call, rec = row_of(service, CALLER)
    assert call["outcome"] == "accepted" and rec["status"] == "complete"
    # Asterisk hangs up every channel as it stops; which hang-up the service hears first is
    # Asterisk's order.
    assert call["end_reason"].startswith(
        ("caller hung up", "caller gone while ARI", "media channel ended")
    ), call["end_reason"]
    # A new call after the restart works end to end.
    second = "+46701230002"
    d2 = await answered_driver(phones, MESSAGE_LINE, second)
    await d2.accept("rfc4733")
    await d2.talk(1.0)
    d2.hang_up()
    assert await d2.call.wait_ended() == "local"
    await service.wait(lambda: service.calls_in_progress() == 0, "the new call to end")
    call2, rec2 = row_of(service, second)
    assert call2["outcome"] == "accepted" and rec2["status"] == "complete"
    frames = service.frames(rec2["id"])
    assert_only_parties(frames, d2.call.rtp.sent)
    assert find_in_recording(frames, d2.call.rtp) is not None
    await nothing_left(pbx)


@pytest.mark.parametrize("catalog", ["own", "shared"])
async def test_two_instances_on_one_asterisk_keep_to_their_own(
    pbx: Asterisk, service: Service, phones: Phones, tmp_path: Path, catalog: str
) -> None:
    """Two instances, each with its own Stasis application, on one PBX: with a vault each, or
    sharing one vault and catalog (as nodes share one catalog, docs/deploy.md). Killing one
    ends its own call only, whatever the catalog says of the other's."""
    (tmp_path / "b").mkdir()
    shared = service.data_dir if catalog == "shared" else None
    other = Service(pbx, tmp_path / "b", app=Asterisk.APP_B, data_dir=shared)
    await asyncio.to_thread(other.start)
    try:
        caller_b = "+46701230003"
        d_a = await answered_driver(phones, MESSAGE_LINE, CALLER)
        d_b = await answered_driver(phones, "B" + MESSAGE_LINE, caller_b)
        await asyncio.gather(d_a.accept("info"), d_b.accept("rfc4733"))
        bridges = [ari.parse_own_id(b["id"]) for b in pbx.bridges()]
        assert len(bridges) == 2 and all(bridges)
        assert len({b.instance for b in bridges if b}) == 2  # each instance marks its own
        await d_a.talk(1.0)
        await asyncio.to_thread(service.kill)
        await asyncio.to_thread(service.start)
        assert await d_a.call.wait_ended() == "remote"  # A cleared its own call ...
        # ... and left B's alone: B's call carries on, recorded without a break, its row open
        # (on a shared catalog too: A's start closes the rows of dead processes only).
        assert other.calls_in_progress() == 1
        assert row_of(other, caller_b)[0]["ended_at"] is None
        await d_b.talk(1.0)
        d_b.hang_up()
        assert await d_b.call.wait_ended() == "local"
        await other.wait(lambda: other.calls_in_progress() == 0, "B's call to end")
        call_b, rec_b = row_of(other, caller_b)
        assert call_b["end_reason"].startswith("caller hung up")
        assert rec_b["status"] == "complete"
        frames = other.frames(rec_b["id"])
        assert_only_parties(frames, d_b.call.rtp.sent)
        span = find_in_recording(frames, d_b.call.rtp)
        assert span is not None and span.last.at >= d_b.marks["hang_up"] - LATE
        await nothing_left(pbx)
    finally:
        await asyncio.to_thread(other.close)
