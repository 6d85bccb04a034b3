"""Prompt audio on a Twilio stream goes out paced by call time, not all at once.

The service sends PROMPT_LEAD_SECONDS of prompt audio ahead of call time, a batch every
PROMPT_BATCH_SECONDS of it (one media message per batch), and each prompt's mark after its last
frame; a key that stops the
prompt gets the mark and a ``clear`` at once, and nothing more of the prompt. These tests play
Twilio on a raw websocket: every step is acknowledged by a ping answered in order (the stream
is read one message at a time, so a pong means everything before the ping was acted on).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp

from ivr.app_keys import CALLS
from ivr.platforms.twilio import app as twilio_app
from tests.test_twilio_e2e import media_msg, start_call, start_msg

FRAME_S = 0.02


async def until_pong(ws: aiohttp.ClientWebSocketResponse, data: bytes) -> list[dict]:
    """Ping; the messages the service sent before its pong."""
    await ws.ping(data)
    seen = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.PONG:
            assert msg.data == data
            return seen
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        seen.append(json.loads(msg.data))
    raise AssertionError(f"closed before the pong: {ws.close_code}")


def media_frames(seen: list[dict]) -> int:
    """The 20 ms frames of prompt audio in ``seen``, whatever messages carried them."""
    audio = sum(len(base64.b64decode(m["media"]["payload"])) for m in seen if m["event"] == "media")
    assert audio % 160 == 0, audio
    return audio // 160


def media_messages(seen: list[dict]) -> int:
    return sum(1 for m in seen if m["event"] == "media")


@contextlib.asynccontextmanager
async def consent_stream(url: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A call's consent stream, started: the prompt is playing."""
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url, autoping=False) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            yield ws


async def test_the_prompt_goes_out_a_lead_ahead_of_call_time(service):
    _, url = service
    lead = round(twilio_app.PROMPT_LEAD_SECONDS / FRAME_S)
    async with consent_stream(url) as ws:
        first = await until_pong(ws, b"start")
        # At call time 0: the frame whose slot starts now and the lead after it, in one message.
        assert [m["event"] for m in first] == ["media"]
        assert media_frames(first) == lead + 1
        # One second of the caller's audio moves call time on: the lead follows it, in
        # batches.
        for n in range(50):
            await ws.send_str(media_msg(2 + n, 20 * n))
        later = await until_pong(ws, b"1s")
        sent = lead + 1 + media_frames(later)
        batch = round(twilio_app.PROMPT_BATCH_SECONDS / FRAME_S)
        assert round(1.0 / FRAME_S) - batch + lead <= sent <= round(1.0 / FRAME_S) + lead + 1
        # A message a batch, not a message a frame.
        assert 1.0 / twilio_app.PROMPT_BATCH_SECONDS - 1 <= media_messages(later) <= 6
        assert not any(m["event"] == "mark" for m in later)
        # Call time runs on to the prompt's end: the rest of it, then its mark.
        seq, ts = 52, 1000
        seen: list[dict] = []
        while not any(m["event"] == "mark" for m in seen):
            assert ts < 60_000, "the prompt never finished"
            for _ in range(25):
                await ws.send_str(media_msg(seq, ts))
                seq, ts = seq + 1, ts + 20
            seen += await until_pong(ws, str(seq).encode())
            # Never more than the lead ahead of call time (ts: the next frame's).
            assert sent + media_frames(seen) <= round(ts / 1000 / FRAME_S) + lead + 1
        total = sent + media_frames(seen)
        assert total > 3 * lead  # a prompt of seconds, not one batch
        assert [m["event"] for m in seen][-1] == "mark"


async def test_a_batch_longer_than_a_message_holds_is_split(service, monkeypatch):
    """A late wake-up (or the first batch) owing more frames than PROMPT_MESSAGE_FRAMES sends
    them in messages of at most that many, in order."""
    monkeypatch.setattr(twilio_app, "PROMPT_MESSAGE_FRAMES", 4)
    _, url = service
    lead = round(twilio_app.PROMPT_LEAD_SECONDS / FRAME_S)
    async with consent_stream(url) as ws:
        first = await until_pong(ws, b"start")
        sizes = [media_frames([m]) for m in first]
        assert sizes == [4] * ((lead + 1) // 4) + [(lead + 1) % 4] * bool((lead + 1) % 4)


async def test_a_key_during_the_prompt_sends_its_mark_and_a_clear_and_no_more_of_it(service):
    _, url = service
    lead = round(twilio_app.PROMPT_LEAD_SECONDS / FRAME_S)
    async with consent_stream(url) as ws:
        assert media_frames(await until_pong(ws, b"start")) == lead + 1
        await ws.send_str(
            json.dumps({"event": "dtmf", "sequenceNumber": "2", "dtmf": {"digit": "1"}})
        )
        after_key = await until_pong(ws, b"key")
        events = [m["event"] for m in after_key]
        # The mark of the prompt cut short, then the clear (which makes Twilio echo it);
        # then, perhaps, the next prompt (the confirmation), paced from its own start.
        assert events[:2] == ["mark", "clear"], events
        first_mark = after_key[0]["mark"]["name"]
        rest = after_key[2:]
        assert media_frames(rest) <= lead + 1
        assert not any(m["event"] == "mark" and m["mark"]["name"] == first_mark for m in rest)


async def test_a_stream_that_goes_quiet_is_paced_by_wall_time(service, monkeypatch):
    """No media from Twilio: the timer takes over, and the prompt goes on being sent."""
    monkeypatch.setattr(twilio_app, "PROMPT_LEAD_SECONDS", 0.1)
    monkeypatch.setattr(twilio_app, "PROMPT_BATCH_SECONDS", 0.05)
    _, url = service
    async with consent_stream(url) as ws:
        assert media_frames(await until_pong(ws, b"start")) == round(0.1 / FRAME_S) + 1
        frames = 0
        async for msg in ws:  # sent by the timer alone, as wall time passes
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frames += media_frames([json.loads(msg.data)])
            if frames >= 20:  # 0.4 s of the prompt beyond its first batch
                break


async def test_a_batch_already_due_when_the_media_stops_goes_out_at_once(service):
    """Wall time ahead of the media's (the media late, then none at all): the next batch is
    due before the stream waits, and goes out then, not when the next message comes (aiohttp
    took a wait of zero for no deadline at all, and such a stream waited for ever)."""
    app, url = service
    registry = app[CALLS]
    wall, ahead = registry.clock, [timedelta(0)]
    registry.clock = lambda: wall() + ahead[0]  # the sessions' wall clock
    lead = round(twilio_app.PROMPT_LEAD_SECONDS / FRAME_S)
    async with consent_stream(url) as ws:
        assert media_frames(await until_pong(ws, b"start")) == lead + 1
        ahead[0] = timedelta(seconds=1)
        await ws.send_str(media_msg(2, 0))  # the last message the service gets
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        # The frames due by call time 1 s (the wall's) and the lead after it: a second's
        # worth beyond the lead sent at the start.
        assert media_frames([json.loads(msg.data)]) == round(1.0 / FRAME_S)
