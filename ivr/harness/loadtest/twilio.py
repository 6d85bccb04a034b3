"""``ivr loadtest``: many simulated Twilio calls at once, and what they cost the service.

Each call is the simulator's (``ivr.harness.twilio_sim``, in fast mode): the signed voice
webhook, the consent stream in virtual time (the accept key half a second into the prompt on
opt-in lines), the signed continue webhook; then it hands the recording stream over, and this
module streams both tracks in REAL time, fed by the shared ticker (``core.StreamRun``) from
pre-built byte templates; then the signed status callback, whose answer says how many frames the
service stored.

Frame accounting: ``frames_sent`` counts recording-stream frames (both tracks). On the opt-in
line the frames of the consent stream sent after the accept key (while the "recording started"
prompt plays) are recorded too; they are counted separately as ``frames_sent_consent``.
``frames_lost`` = sent + sent_consent − stored, over the calls that completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ivr.harness import twilio_wire as wire
from ivr.harness.audio import tone
from ivr.harness.loadtest.core import (
    FRAME_MS,
    HTTP_TIMEOUT_S,
    PRESS_AFTER_S,
    CallFailed,
    CallResult,
    Driver,
    Options,
    TickedStream,
    dist,
    fmt,
    p50_p99,
)
from ivr.harness.twilio_sim import CallOptions, StreamStart, simulate_call
from ivr.harness.twilio_sim import CallResult as SimulatedCall
from ivr.harness.twilio_wire import AUTH_TOKEN_ENV, DEFAULT_TO, DEMO_AUTH_TOKEN
from ivr.harness.wsclient import OP_CLOSE, RawWebSocket, WebSocketError, text_frame

__all__ = ["LoadtestOptions", "TwilioDriver"]

SYNC_FRAMES = 25  # the consent phase syncs with the service every 0.5 s of call time
MAX_CONSENT_CALL_S = 120.0  # a consent phase longer than this (call time) is a failure
CONNECT_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 30.0

_TONE = tone(440.0, -24.0)
POOL: tuple[bytes, ...] = tuple(_TONE.payload(i).encode() for i in range(len(_TONE)))  # 1 s


@dataclass(frozen=True)
class LoadtestOptions(Options):
    to: str = DEFAULT_TO
    auth_token: str | None = None  # None: $TWILIO_AUTH_TOKEN, else the demo token

    def resolved_token(self) -> str:
        if self.auth_token is not None:
            return self.auth_token
        return os.environ.get(AUTH_TOKEN_ENV) or DEMO_AUTH_TOKEN

    def deadline(self) -> float:
        margin = self.margin if self.margin is not None else 30.0 + 0.06 * self.calls
        return self.resolved_ramp() + self.duration + margin


# -- the recording stream ---------------------------------------------------------------------
class _Streamer(TickedStream):
    """One real-time two-track stream, fed by the ticker."""

    send_errors = (OSError, RuntimeError)
    send_failure = "stream write failed"

    def __init__(self, ws: RawWebSocket, stream_sid: str, total: int, seq0: int) -> None:
        super().__init__(total)  # frames per track
        self.ws = ws
        self.tmpl_in = wire.media_template(stream_sid, "inbound")
        self.tmpl_out = wire.media_template(stream_sid, "outbound")
        self.seq0 = seq0  # sequence number of the first media message
        self.closed_at: float | None = None
        self.backlog = 0  # the most bytes the socket held back, sampled every second

    @property
    def frames_sent(self) -> int:
        return 2 * self.sent  # both tracks

    def pump(self, due: int) -> int:
        start, target = self.sent, min(due - self.join_tick, self.total)
        if target <= start:
            return 0
        # Frame n: chunk n + 1 of both tracks (k 0 and 1), the outbound half a second ahead.
        tracks = tuple(enumerate((self.tmpl_in, self.tmpl_out)))
        seq0, size, half = self.seq0, len(POOL), len(POOL) // 2
        self.ws.write_raw(
            b"".join(
                text_frame(
                    tmpl % (seq0 + 2 * n + k, n + 1, n * FRAME_MS, POOL[(n + k * half) % size])
                )
                for n in range(start, target)
                for k, tmpl in tracks
            )
        )
        self.sent = target
        if due % 50 == 0:
            self.backlog = max(self.backlog, self.ws.buffered)
        return 2 * (target - start)

    @classmethod
    def stats(cls, streams: list[_Streamer]) -> dict[str, Any]:
        return {"max_send_backlog_bytes": max((s.backlog for s in streams), default=0)}


class TwilioDriver(Driver[LoadtestOptions]):
    platform = "twilio"
    options_type = LoadtestOptions
    stream = _Streamer
    media = "recording"
    timings = ("first_prompt_ms", "stop_to_close_ms")
    headline = "webhook_ms"
    lag = ("stop_to_close_ms", "stop->close")

    def __init__(self, options: LoadtestOptions, session: Any) -> None:
        super().__init__(options, session)
        self.account_sid = wire.new_sid("AC")
        self.latencies: dict[str, list[float]] = {"voice": [], "continue": [], "status": []}
        self.set_up = 0

    async def stream_media(self, result: CallResult, start: StreamStart) -> _Streamer:
        """Open a two-track stream to ``start.url``, stream it in real time via the ticker, stop,
        wait for the close; CallFailed if it cannot connect."""
        try:
            ws = await RawWebSocket.connect(start.url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise CallFailed(f"stream: cannot connect: {exc or type(exc).__name__}") from None
        except WebSocketError as exc:
            raise CallFailed(f"stream: {exc}") from None
        sid = wire.new_sid("MZ")
        streamer = _Streamer(ws, sid, self.options.frames(), seq0=2)
        closed = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, WebSocketError):
                while (await ws.receive())[0] != OP_CLOSE:
                    pass
            streamer.closed_at = asyncio.get_running_loop().time()
            closed.set()
            reason = f"{ws.close_code} {ws.close_reason}".strip() if ws.close_code else "dropped"
            streamer.fail(f"stream closed by the server after {streamer.sent} frames: {reason}")

        watcher = asyncio.ensure_future(watch())
        try:
            ws.send_text(wire.connected())
            ws.send_text(
                wire.start(sid, start.call_sid, start.account_sid, start.tracks, start.params)
            )
            await result.stream(streamer)
            if streamer.error is None:
                seq = streamer.seq0 + 2 * streamer.total
                ws.send_text(wire.stop(seq, sid, start.call_sid, start.account_sid))
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await closed.wait()
                except TimeoutError:
                    streamer.closed_at = None
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if not ws.closed:
                ws.abort()
        closed_at, end_time = streamer.closed_at, streamer.end_time
        if streamer.error is None and closed_at is not None and end_time is not None:
            result.ms["stop_to_close_ms"] = (closed_at - end_time) * 1000
        return streamer

    async def call(self, result: CallResult) -> None:
        """One call as Twilio places it: the simulator (``twilio_sim``) does the webhooks and
        the consent stream in virtual time, and hands the recording stream over to the ticker."""
        o = self.options
        recording: list[_Streamer | CallFailed] = []

        async def stream_recording(start: StreamStart) -> None:
            self.set_up += 1
            try:
                recording.append(await self.stream_media(result, start))
            except CallFailed as exc:
                recording.append(exc)
            finally:
                result.give_up()  # if it never streamed

        press = o.resolved_press()
        options = CallOptions(
            url=o.url,
            to=o.to,
            from_=o.from_,
            auth_token=o.resolved_token(),
            presses=[(PRESS_AFTER_S, press)] if press else [],
            duration=0.0,  # the recording stream is the conversation
            fast=True,
            max_call_seconds=MAX_CONSENT_CALL_S,
            http_timeout=HTTP_TIMEOUT_S,
            wall_timeout=o.deadline(),
            account_sid=self.account_sid,
            call_sid=wire.new_sid("CA"),
            sync_frames=SYNC_FRAMES,
        )
        call = await simulate_call(options, self.session, on_start_stream=stream_recording)
        # The simulator times every webhook in order: voice, continue, and the status callback.
        latencies = list(call.webhook_latency_ms)
        if call.status_response is not None and latencies:
            self.latencies["status"].append(latencies.pop())
        for kind, ms in zip(("voice", "continue"), latencies, strict=False):
            self.latencies[kind].append(ms)
        status = call.status_response or {}
        result.counts["frames_stored"] = int(status.get("frames_stored") or 0)
        result.counts["server_frames_lost"] = int(status.get("frames_lost") or 0)
        if call.first_prompt_frame_latency_ms:
            result.ms["first_prompt_ms"] = call.first_prompt_frame_latency_ms
        if call.decision == "accepted":  # recorded from the key on, on the consent stream too
            result.counts["frames_sent_consent"] = call.frames_after_key
        refused = [code for code in call.closed_by_server if code != 1000]
        streamer = recording[0] if recording else None
        if call.error is not None:
            raise CallFailed(call.error)
        if refused:
            raise CallFailed(f"consent stream closed by the service: {refused[0]}")
        if isinstance(streamer, CallFailed):
            raise CallFailed(f"recording {streamer}")
        if streamer is None:
            raise CallFailed(no_recording_stream(call))
        if streamer.error is not None:
            raise CallFailed(f"recording {streamer.error}")
        if call.recording_status != "complete":
            ended = call.recording_status or "without a recording"
            raise CallFailed(
                f"recording {call.recording_id or '-'} ended {ended} "
                f"(decision {call.decision or '-'})"
            )

    def progress_head(self) -> str:
        return f"set up {self.set_up}/{self.options.calls}"

    def service_fields(self, results: list[CallResult]) -> dict[str, Any]:
        completed = [r for r in results if r.completed]
        consent = sum(r.counts["frames_sent_consent"] for r in completed)
        expected = sum(r.frames_sent for r in completed) + consent
        stored = sum(r.counts["frames_stored"] for r in completed)
        webhooks = [x for v in self.latencies.values() for x in v]
        return {
            "frames_sent_consent": consent,
            "frames_expected": expected,
            "frames_stored": stored,
            "frames_lost": expected - stored,
            "server_frames_lost": sum(r.counts["server_frames_lost"] for r in results),
            "webhook_ms": {**dist(webhooks), **{k: dist(v) for k, v in self.latencies.items()}},
        }

    @classmethod
    def rows(cls, s: dict[str, Any]) -> list[tuple[str, str]]:
        hooks = s["webhook_ms"]
        return [
            (
                "frames",
                f"sent {fmt(s['frames_sent'])} (+{fmt(s['frames_sent_consent'])} on the consent "
                f"stream), stored {fmt(s['frames_stored'])}, lost {fmt(s['frames_lost'])}",
            ),
            (
                "webhooks ms",
                f"{p50_p99(hooks)}  max {fmt(hooks['max'])}  (n={hooks['count']})",
            ),
            ("first prompt ms", p50_p99(s["first_prompt_ms"])),
        ]


def no_recording_stream(call: SimulatedCall) -> str:
    """Why a call the generator made never streamed its recording, in the words a user of
    ``ivr loadtest`` needs: a call the service turned away (its call cap) is not a failure of
    the recording."""
    answer = call.twiml[0] if call.twiml else ""
    with contextlib.suppress(ET.ParseError):
        reject = ET.fromstring(answer).find("Reject")
        if reject is not None:
            reason = reject.get("reason") or "rejected"
            return (
                f"turned away by the service ({reason}): at its call cap? ([limits] max_calls; "
                "bench/calls.py sets it above --calls)"
            )
    return f"no recording stream (decision {call.decision or '-'})"
