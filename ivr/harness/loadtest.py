"""``ivr loadtest``: many simulated Twilio calls at once, and what they cost the service.

Each call does what Twilio does: the signed voice webhook, the consent stream (in virtual time:
the prompt is "played" by counting the audio the service sends, media timestamps move the call
clock, the accept key is pressed during the prompt and marks are echoed once their audio has
played), the signed continue webhook, the recording stream with both tracks in REAL time, and
the signed status callback, whose answer says how many frames the service stored.

The recording streams are paced by one central ticker: every 20 ms it writes the next frame of
both tracks to every streaming call, one ``write`` per call, from pre-built byte templates
(``rawws``). A late tick is caught up (each call is owed ``ticks since it joined`` frames), so
lateness never accumulates. No task runs per call per tick.

Cost: the service's CPU (``/healthz`` ``cpu_seconds``) is read when every call is streaming and
again when the first call stops, and divided by the call-minutes streamed in between. The same
streaming load (same calls, duration, ramp and ticker, both tracks) is then run against the bare
reference (``ivr.harness.bare_server``: receive, decode, seal, write; nothing else), and the
report gives the ratio of the two.

Frame accounting: ``frames_sent`` counts recording-stream frames (both tracks). On the opt-in
line the frames of the consent stream sent after the accept key (while the "recording started"
prompt plays) are recorded too; they are counted separately as ``frames_sent_consent``.
``frames_lost`` = sent + sent_consent − stored, over the calls that completed.

Like the simulator, this module never imports the service: it only speaks HTTP and websockets.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import resource
import secrets
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ivr.adapters.twilio_signature import SIGNATURE_HEADER, compute_signature
from ivr.harness.rawws import OP_CLOSE, RawWebSocket, WebSocketError, frame_header

__all__ = [
    "DEFAULT_TO",
    "DEFAULT_URL",
    "DEMO_AUTH_TOKEN",
    "LoadtestOptions",
    "add_loadtest_parser",
    "format_report",
    "options_from_args",
    "run_loadtest",
    "run_loadtest_cli",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TO = "+15550100001"
DEFAULT_FROM = "+46701234567"
DEMO_AUTH_TOKEN = "demo-auth-token-not-secret"  # the embedded demo configuration's token
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
OPT_IN_LINES = frozenset({"+15550100001", "+15550100005"})  # demo lines that ask for key 1

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
PRESS_AFTER_MS = 500  # call time into the prompt at which the accept key is pressed
IDLE_ADVANCE_MS = 500  # call time sent when the service is waiting for time to pass
MAX_CONSENT_CALL_MS = 120_000  # a consent phase longer than this (call time) is a failure
WEBHOOK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15.0
QUIET_S = 2.0  # no message from the service for this long: it is waiting for call time
CLOSE_TIMEOUT_S = 30.0
CPU_READ_TIMEOUT_S = 10.0
MAX_ERRORS_REPORTED = 5
SATURATED_UTILISATION = 0.95  # server CPU (fraction of one core) that means "flat out"
SATURATED_LAG_MS = 1000.0  # stop->close p99 this long: the service fell behind real time

_MEDIA_PREFIX = b'{"event":"media"'
_PAYLOAD_KEY = b'"payload":"'


# -- options ----------------------------------------------------------------------------------
@dataclass
class LoadtestOptions:
    url: str = DEFAULT_URL
    calls: int = 50
    duration: float = 20.0  # seconds of recording stream per call, in real time
    ramp: float | None = None  # seconds over which call starts are spread; None: min(10, N/50)
    to: str = DEFAULT_TO
    from_: str = DEFAULT_FROM
    press: str | None = None  # key pressed during the prompt; None: "1" on opt-in lines
    auth_token: str | None = None  # None: $TWILIO_AUTH_TOKEN, else the demo token
    reference: bool = True
    progress_interval: float = 3.0  # seconds between progress lines; 0: none
    progress_stream: Any = None  # default sys.stderr
    margin: float | None = None  # extra seconds before the overall deadline; None: automatic

    def resolved_ramp(self) -> float:
        return self.ramp if self.ramp is not None else min(10.0, self.calls / 50)

    def resolved_press(self) -> str:
        if self.press is not None:
            return self.press
        return "1" if self.to in OPT_IN_LINES else ""

    def resolved_token(self) -> str:
        if self.auth_token is not None:
            return self.auth_token
        return os.environ.get(AUTH_TOKEN_ENV) or DEMO_AUTH_TOKEN

    def deadline(self) -> float:
        margin = self.margin if self.margin is not None else 30.0 + 0.06 * self.calls
        return self.resolved_ramp() + self.duration + margin


class CallFailed(Exception):
    """One call did not go as Twilio's would; the message says where."""


# -- audio and message templates --------------------------------------------------------------
def _ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = min(max((magnitude >> 7).bit_length() - 1, 0), 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _payload_pool(n: int = 50) -> tuple[bytes, ...]:
    """``n`` frames (one second) of a quiet 440 Hz tone, base64-encoded once."""
    frames = []
    for f in range(n):
        samples = (
            int(2000 * math.sin(2 * math.pi * 440 * (f * FRAME_BYTES + i) / 8000))
            for i in range(FRAME_BYTES)
        )
        frames.append(base64.b64encode(bytes(_ulaw(s) for s in samples)))
    return tuple(frames)


POOL = _payload_pool()
_POOL_N = len(POOL)
_HALF_POOL = _POOL_N // 2

_MEDIA_TEMPLATE = (
    b'{"event":"media","sequenceNumber":"%d","streamSid":"@SID@","media":{"track":"@TRACK@",'
    b'"chunk":"%d","timestamp":"%d","payload":"%b"}}'
)


def media_template(stream_sid: str, track: str) -> bytes:
    """A media message with its stream and track filled in; ``% (seq, chunk, ts, payload)``."""
    return _MEDIA_TEMPLATE.replace(b"@SID@", stream_sid.encode()).replace(
        b"@TRACK@", track.encode()
    )


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _connected() -> bytes:
    return b'{"event":"connected","protocol":"Call","version":"1.0.0"}'


def _start(
    stream_sid: str, call_sid: str, account_sid: str, tracks: list[str], params: dict[str, str]
) -> bytes:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid,
                "callSid": call_sid,
                "streamSid": stream_sid,
                "tracks": tracks,
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    ).encode()


def _stop(seq: int, stream_sid: str, call_sid: str, account_sid: str) -> bytes:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    ).encode()


# -- the ticker -------------------------------------------------------------------------------
class _Streamer:
    """One real-time two-track stream, fed by the ticker."""

    __slots__ = (
        "closed_at",
        "done",
        "end_time",
        "error",
        "join_tick",
        "join_time",
        "sent",
        "seq0",
        "tmpl_in",
        "tmpl_out",
        "total",
        "ws",
    )

    def __init__(self, ws: RawWebSocket, stream_sid: str, total: int, seq0: int) -> None:
        self.ws = ws
        self.tmpl_in = media_template(stream_sid, "inbound")
        self.tmpl_out = media_template(stream_sid, "outbound")
        self.total = total  # frames per track
        self.seq0 = seq0  # sequence number of the first media message
        self.sent = 0  # frames per track written so far
        self.join_tick = 0
        self.join_time = 0.0
        self.end_time: float | None = None
        self.error: str | None = None
        self.closed_at: float | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pump(self, due: int) -> int:
        """Write every frame owed by tick ``due`` in one write; returns frames written."""
        target = due - self.join_tick
        if target > self.total:
            target = self.total
        n = self.sent
        if target <= n:
            return 0
        parts: list[bytes] = []
        add = parts.append
        tin, tout, seq = self.tmpl_in, self.tmpl_out, self.seq0 + 2 * n
        while n < target:
            ts = n * FRAME_MS
            chunk = n + 1
            m = tin % (seq, chunk, ts, POOL[n % _POOL_N])
            add(frame_header(len(m)))
            add(m)
            m = tout % (seq + 1, chunk, ts, POOL[(n + _HALF_POOL) % _POOL_N])
            add(frame_header(len(m)))
            add(m)
            seq += 2
            n += 1
        written = 2 * (target - self.sent)
        self.ws.write_raw(b"".join(parts))
        self.sent = target
        return written

    def fail(self, reason: str) -> None:
        if self.error is None and self.sent < self.total:
            self.error = reason
        if not self.done.done():
            self.done.set_result(None)


class _StreamRun:
    """The streaming phase of one run: the ticker, who is streaming, and the CPU samples."""

    def __init__(self, expected: int, read_cpu: Callable[[], Awaitable[float]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.read_cpu = read_cpu
        self.pending_join = expected  # calls that may still join
        self.active: list[_Streamer] = []
        self.streamers: list[_Streamer] = []
        self.frames_sent = 0
        self.lateness: list[float] = []
        self.max_backlog = 0
        self.t0: float | None = None
        self.first_join = asyncio.Event()
        self.all_joined = asyncio.Event()
        self.first_done = asyncio.Event()
        self.last_done = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.samples: dict[str, tuple[float, float, float]] = {}
        self._samplers = [
            asyncio.ensure_future(self._sample_cpu(name, event))
            for name, event in (
                ("first_join", self.first_join),
                ("all_joined", self.all_joined),
                ("first_done", self.first_done),
                ("last_done", self.last_done),
            )
        ]

    # -- membership ------------------------------------------------------------------------
    def due_now(self) -> int:
        assert self.t0 is not None
        return int((self.loop.time() - self.t0) / FRAME_S)

    def join(self, s: _Streamer) -> None:
        if self.t0 is None:
            self.t0 = self.loop.time()
            self._task = asyncio.ensure_future(self._tick())
        s.join_tick = self.due_now()
        s.join_time = self.loop.time()
        self.active.append(s)
        self.streamers.append(s)
        self.pending_join -= 1
        self.first_join.set()
        self._check()

    def gave_up(self) -> None:
        """A call that will never stream (it failed before its recording stream)."""
        self.pending_join -= 1
        self._check()

    def _check(self) -> None:
        if self.pending_join <= 0:
            if self.streamers:
                self.all_joined.set()
            if not self.active:
                self.last_done.set()

    def _finished(self, s: _Streamer) -> None:
        s.end_time = self.loop.time()
        if not s.done.done():
            s.done.set_result(None)
        if s.error is None:
            self.first_done.set()

    # -- the ticker ------------------------------------------------------------------------
    SEND_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError)
    SEND_FAILURE = "recording stream write failed"

    def _note_backlog(self, streams: list[Any]) -> None:
        backlog = max(s.ws.buffered for s in streams)
        if backlog > self.max_backlog:
            self.max_backlog = backlog

    async def _tick(self) -> None:
        loop, t0 = self.loop, self.t0
        assert t0 is not None
        k = 0
        while not self._stopped:
            k += 1
            target = t0 + k * FRAME_S
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            self.lateness.append(now - target)
            due = int((now - t0) / FRAME_S)
            if due > k:
                k = due  # late: this pass catches every stream up
            keep: list[_Streamer] = []
            sent = 0
            for s in self.active:
                if s.error is None:
                    try:
                        sent += s.pump(due)
                    except self.SEND_ERRORS as exc:
                        s.fail(f"{self.SEND_FAILURE}: {exc}")
                if s.error is not None or s.sent >= s.total:
                    self._finished(s)
                else:
                    keep.append(s)
            self.active = keep
            self.frames_sent += sent
            if k % 50 == 0 and keep:
                self._note_backlog(keep)
            if not keep and self.pending_join <= 0:
                self.last_done.set()
            if not keep:
                # Nobody to feed: sleep until a stream joins (or the run ends).
                self._wake.clear()
                if self.pending_join <= 0:
                    return
                while not self.active and not self._stopped and self.pending_join > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    self._wake.clear()
                now = loop.time()
                k = int((now - t0) / FRAME_S)

    def wake(self) -> None:
        self._wake.set()

    async def _sample_cpu(self, name: str, event: asyncio.Event) -> None:
        """Read the server's CPU seconds (and ours) when ``event`` fires."""
        await event.wait()
        t1 = self.loop.time()
        own1 = _own_cpu()
        try:
            async with asyncio.timeout(CPU_READ_TIMEOUT_S):
                cpu = await self.read_cpu()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError):
            return
        t2 = self.loop.time()
        self.samples[name] = ((t1 + t2) / 2, cpu, (own1 + _own_cpu()) / 2)

    async def stop(self) -> None:
        """Stop the ticker; let CPU reads already under way finish (bounded); drop the rest."""
        self._stopped = True
        self._wake.set()
        for s in self.active:
            s.fail("load test stopped")
        started = [t for t in self._samplers if not t.done() and self._event_of(t).is_set()]
        if started:
            await asyncio.wait(started, timeout=CPU_READ_TIMEOUT_S + 1)
        for task in [self._task, *self._samplers]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _event_of(self, task: asyncio.Task[None]) -> asyncio.Event:
        events = (self.first_join, self.all_joined, self.first_done, self.last_done)
        return events[self._samplers.index(task)]

    # -- results ---------------------------------------------------------------------------
    def cost(self, duration: float) -> dict[str, Any]:
        """CPU over the steady window (all streaming), else over the whole streaming span."""
        min_window = min(2.0, max(0.5, 0.25 * duration))
        a, b = self.samples.get("all_joined"), self.samples.get("first_done")
        window = "steady"
        if a is None or b is None or b[0] - a[0] < min_window:
            a, b = self.samples.get("first_join"), self.samples.get("last_done")
            window = "whole streaming phase"
        if a is None or b is None or b[0] <= a[0]:
            return {"window": None}
        call_s = 0.0
        for s in self.streamers:
            end = s.end_time if s.end_time is not None else b[0]
            call_s += max(0.0, min(end, b[0]) - max(s.join_time, a[0]))
        wall = b[0] - a[0]
        cpu, sender = b[1] - a[1], b[2] - a[2]
        per_minute = cpu / (call_s / 60) if call_s > 0 else None
        return {
            "window": window,
            "window_s": round(wall, 3),
            "call_minutes": round(call_s / 60, 3),
            "concurrent_calls": round(call_s / wall, 1),
            "server_cpu_s": round(cpu, 3),
            "server_cpu_utilisation": round(cpu / wall, 3),
            "server_cpu_per_call_minute": round(per_minute, 5) if per_minute else None,
            "sender_cpu_s": round(sender, 3),
            "sender_cpu_utilisation": round(sender / wall, 3),
        }

    def ticker_stats(self) -> dict[str, Any]:
        late = sorted(x * 1000 for x in self.lateness)
        return {
            "ticks": len(late),
            "late_p50_ms": _round(_pct(late, 50)),
            "late_p99_ms": _round(_pct(late, 99)),
            "late_max_ms": _round(late[-1]) if late else None,
            "max_send_backlog_bytes": self.max_backlog,
        }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pct(sorted_values: Sequence[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def _dist(values: Sequence[float]) -> dict[str, Any]:
    s = sorted(values)
    return {
        "count": len(s),
        "p50": _round(_pct(s, 50), 1),
        "p99": _round(_pct(s, 99), 1),
        "max": _round(s[-1], 1) if s else None,
    }


# -- one call against the service -------------------------------------------------------------
@dataclass
class _CallResult:
    index: int
    call_sid: str = ""
    completed: bool = False
    error: str | None = None
    frames_sent: int = 0
    frames_sent_consent: int = 0
    frames_stored: int = 0
    server_frames_lost: int = 0
    recording_id: str | None = None
    recording_status: str | None = None
    decision: str | None = None
    first_prompt_ms: float | None = None
    stop_to_close_ms: float | None = None


@dataclass
class _Context:
    options: LoadtestOptions
    base: str
    token: str
    press: str
    session: aiohttp.ClientSession
    run: _StreamRun
    frames_per_track: int
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"voice": [], "continue": [], "status": []}
    )
    set_up: int = 0
    finished: int = 0
    failed: int = 0

    async def webhook(self, kind: str, url: str, params: dict[str, str]) -> str:
        signature = compute_signature(self.token, url, params)
        t = time.perf_counter()
        try:
            async with asyncio.timeout(WEBHOOK_TIMEOUT_S):
                async with self.session.post(
                    url, data=params, headers={SIGNATURE_HEADER: signature}
                ) as resp:
                    body = await resp.text()
        except TimeoutError:
            raise CallFailed(f"{kind} webhook: no answer in {WEBHOOK_TIMEOUT_S:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise CallFailed(f"{kind} webhook: {type(exc).__name__}: {exc}") from None
        self.latencies[kind].append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise CallFailed(f"{kind} webhook: HTTP {resp.status}: {body.strip()[:120]}")
        return body

    def form(self, call_sid: str, status: str, **extra: str) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": status,
            "Direction": "inbound",
            "From": self.options.from_,
            "To": self.options.to,
            **extra,
        }


def _parse_twiml(body: str, kind: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise CallFailed(f"{kind} webhook: answer is not TwiML ({exc})") from None


def _stream_of(root: ET.Element, verb: str, kind: str) -> tuple[str, dict[str, str]]:
    stream = root.find(f"{verb}/Stream")
    if stream is None or not stream.get("url"):
        verbs = " ".join(child.tag for child in root) or "nothing"
        raise CallFailed(f"{kind} webhook: no <{verb}><Stream> in the answer (got {verbs})")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


async def _service_call(ctx: _Context, index: int, start_at: float) -> _CallResult:
    loop = asyncio.get_running_loop()
    result = _CallResult(index, call_sid=_sid("CA"))
    call_sid = result.call_sid
    joined = False
    voice_done = False
    began = 0.0
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    try:
        began = loop.time()
        root = _parse_twiml(
            await ctx.webhook("voice", f"{ctx.base}/twilio/voice", ctx.form(call_sid, "ringing")),
            "voice",
        )
        voice_done = True
        stream_url, params = _stream_of(root, "Connect", "voice")
        redirect = root.find("Redirect")
        if redirect is None or not (redirect.text or "").strip():
            raise CallFailed("voice webhook: no <Redirect> after the consent stream")
        await _consent_phase(ctx, result, stream_url, params)

        root = _parse_twiml(
            await ctx.webhook("continue", redirect.text.strip(), ctx.form(call_sid, "in-progress")),
            "continue",
        )
        rec_url, rec_params = _stream_of(root, "Start", "continue")
        ctx.set_up += 1
        joined = True
        streamer = await _open_recording(ctx, rec_url, rec_params, call_sid)
        result.frames_sent = 2 * streamer.sent
        if streamer.error is not None:
            raise CallFailed(streamer.error)
        if streamer.closed_at is not None:
            result.stop_to_close_ms = (streamer.closed_at - streamer.end_time) * 1000
    except CallFailed as exc:
        result.error = str(exc)
    except (OSError, WebSocketError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not joined:
            ctx.run.gave_up()
    # The status callback: Twilio sends it whatever happened, and it ends the call server-side.
    if voice_done:
        duration = str(max(1, round(loop.time() - began)))
        try:
            body = await ctx.webhook(
                "status",
                f"{ctx.base}/twilio/status",
                ctx.form(call_sid, "completed", CallDuration=duration),
            )
            summary = json.loads(body)
            result.frames_stored = int(summary.get("frames_stored") or 0)
            result.server_frames_lost = int(summary.get("frames_lost") or 0)
            result.recording_id = summary.get("recording_id")
            result.recording_status = summary.get("recording_status")
            result.decision = summary.get("decision")
        except CallFailed as exc:
            result.error = result.error or str(exc)
        except (ValueError, TypeError) as exc:
            result.error = result.error or f"status webhook: unexpected answer ({exc})"
    if result.error is None:
        if result.recording_status != "complete":
            result.error = (
                f"recording {result.recording_id or '-'} ended "
                f"{result.recording_status or 'without a recording'} "
                f"(decision {result.decision or '-'})"
            )
        else:
            result.completed = True
    ctx.finished += 1
    if not result.completed:
        ctx.failed += 1
    return result


async def _consent_phase(
    ctx: _Context, result: _CallResult, url: str, params: dict[str, str]
) -> None:
    """The bidirectional consent stream, in virtual time; returns when the service closes it."""
    try:
        ws = await RawWebSocket.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise CallFailed(f"consent stream: cannot connect: {exc or type(exc).__name__}") from None
    except WebSocketError as exc:
        raise CallFailed(f"consent stream: {exc}") from None
    try:
        async with asyncio.timeout(WEBHOOK_TIMEOUT_S + MAX_CONSENT_CALL_MS / 1000):
            await _ConsentDriver(ctx, result, ws, params).run()
    except TimeoutError:
        raise CallFailed("consent stream: the service never finished the consent phase") from None
    finally:
        if not ws.closed:
            ws.abort()


class _ConsentDriver:
    """Plays Twilio on the consent stream: the call clock moves only with the media we send."""

    def __init__(
        self, ctx: _Context, result: _CallResult, ws: RawWebSocket, params: dict[str, str]
    ) -> None:
        self.ctx, self.result, self.ws, self.params = ctx, result, ws, params
        self.sid = _sid("MZ")
        self.tmpl = media_template(self.sid, "inbound")
        self.seq = 1
        self.frames = 0  # frames sent; call time covered = frames * 20 ms
        self.play_end = 0.0  # call time (ms) at which the audio queued so far has played
        self.pending: deque[tuple[str, float]] = deque()  # marks awaiting their echo
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.closed: tuple[int | None, str] | None = None
        self.start_sent = 0.0
        self.first_media: float | None = None
        self.frames_at_press: int | None = None
        self.accepted = False  # the service answered the key with ``clear``: recording
        self.frames_at_last_echo = 0

    @property
    def now_ms(self) -> int:
        return self.frames * FRAME_MS

    async def run(self) -> None:
        ws = self.ws
        reader = asyncio.ensure_future(self._read())
        try:
            ws.send_text(_connected())
            ws.send_text(
                _start(
                    self.sid, self.result.call_sid, self.ctx.account_sid, ["inbound"], self.params
                )
            )
            self.start_sent = time.perf_counter()
            await self._react()
            press = self.ctx.press
            while self.closed is None:
                self._apply_queued()
                if self.closed is not None:
                    break
                if press and self.frames_at_press is None and self.pending:
                    # The prompt is queued: press the key a moment into it.
                    self._advance(PRESS_AFTER_MS)
                    self._send(
                        b'{"event":"dtmf","sequenceNumber":"%d","streamSid":"%b",'
                        b'"dtmf":{"track":"inbound_track","digit":"%b"}}'
                        % (self._next_seq(), self.sid.encode(), press.encode())
                    )
                    self.frames_at_press = self.frames
                    await self._react()
                    continue
                if self.pending:
                    name, end = self.pending.popleft()
                    self._advance(end)
                    self._echo(name)
                    await self._react()
                    continue
                if self.now_ms > MAX_CONSENT_CALL_MS:
                    raise CallFailed("consent stream: still open after 120 s of call time")
                if not await self._react():
                    self._advance(self.now_ms + IDLE_ADVANCE_MS)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if self.first_media is not None:
            self.result.first_prompt_ms = (self.first_media - self.start_sent) * 1000
        code, reason = self.closed
        if code != 1000:
            raise CallFailed(f"consent stream closed by the service: {code} {reason}".rstrip())
        if self.accepted and self.frames_at_last_echo > (self.frames_at_press or 0):
            # Sent after the key and before the echo that ended the stream: recorded.
            self.result.frames_sent_consent = self.frames_at_last_echo - (self.frames_at_press or 0)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, message: bytes) -> None:
        self.ws.write_raw(frame_header(len(message)) + message)

    def _advance(self, until_ms: float) -> None:
        """Send inbound frames until the call clock reaches ``until_ms``."""
        parts: list[bytes] = []
        tmpl, n = self.tmpl, self.frames
        while n * FRAME_MS < until_ms:
            m = tmpl % (self._next_seq(), n + 1, n * FRAME_MS, POOL[n % _POOL_N])
            parts.append(frame_header(len(m)))
            parts.append(m)
            n += 1
        self.frames = n
        if parts:
            self.ws.write_raw(b"".join(parts))

    def _echo(self, name: str) -> None:
        message = json.dumps(
            {
                "event": "mark",
                "sequenceNumber": str(self._next_seq()),
                "streamSid": self.sid,
                "mark": {"name": name},
            }
        ).encode()
        self._send(message)
        self.frames_at_last_echo = self.frames

    async def _read(self) -> None:
        ws, put = self.ws, self.events.put_nowait
        try:
            while True:
                op, data = await ws.receive()
                if op == OP_CLOSE:
                    put(("close", ws.close_code, ws.close_reason))
                    return
                if data.startswith(_MEDIA_PREFIX):
                    if self.first_media is None:
                        self.first_media = time.perf_counter()
                    i = data.find(_PAYLOAD_KEY) + len(_PAYLOAD_KEY)
                    j = data.find(b'"', i)
                    b64 = data[i:j]
                    put(("media", len(b64) * 3 // 4 - b64[-2:].count(b"=")))
                    continue
                try:
                    message = json.loads(data)
                except ValueError:
                    continue
                event = message.get("event") if isinstance(message, dict) else None
                if event == "mark":
                    put(("mark", str((message.get("mark") or {}).get("name", ""))))
                elif event == "clear":
                    put(("clear",))
        except (OSError, asyncio.IncompleteReadError, WebSocketError) as exc:
            put(("close", None, f"connection lost ({type(exc).__name__})"))

    def _apply(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        now = self.now_ms
        if kind == "media":
            self.play_end = max(self.play_end, now) + event[1] / 8  # 8 bytes per ms
        elif kind == "mark":
            self.pending.append((event[1], max(self.play_end, now)))
        elif kind == "clear":
            self.accepted = self.frames_at_press is not None
            # Twilio drops the queued audio and echoes the pending marks at once.
            self.play_end = now
            while self.pending:
                self._echo(self.pending.popleft()[0])
        elif kind == "close":
            self.closed = (event[1], event[2])

    def _apply_queued(self) -> None:
        while not self.events.empty():
            self._apply(self.events.get_nowait())

    async def _react(self) -> bool:
        """Wait for the service's answer: a mark or the close. False if it stayed quiet."""
        while self.closed is None:
            try:
                async with asyncio.timeout(QUIET_S):
                    event = await self.events.get()
            except TimeoutError:
                return False
            self._apply(event)
            if event[0] in ("mark", "close"):
                return True
        return True


async def _open_recording(
    ctx: _Context, url: str, params: dict[str, str], call_sid: str
) -> _Streamer:
    """Open a two-track stream, stream it in real time via the ticker, stop, wait for the close.

    Joins the run, or tells it that this call gave up, exactly once."""
    run = ctx.run
    try:
        ws = await RawWebSocket.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        run.gave_up()
        raise CallFailed(f"recording stream: cannot connect: {exc or type(exc).__name__}") from None
    except WebSocketError as exc:
        run.gave_up()
        raise CallFailed(f"recording stream: {exc}") from None
    account, sid = ctx.account_sid, _sid("MZ")
    streamer = _Streamer(ws, sid, ctx.frames_per_track, seq0=2)
    closed = asyncio.Event()

    async def watch() -> None:
        try:
            while True:
                op, _ = await ws.receive()
                if op == OP_CLOSE:
                    break
        except (OSError, asyncio.IncompleteReadError, WebSocketError):
            pass
        streamer.closed_at = run.loop.time()
        closed.set()
        reason = f"{ws.close_code} {ws.close_reason}".strip() if ws.close_code else "dropped"
        streamer.fail(
            f"recording stream closed by the server after {streamer.sent} frames: {reason}"
        )
        run.wake()

    watcher = asyncio.ensure_future(watch())
    joined = False
    try:
        ws.send_text(_connected())
        ws.send_text(_start(sid, call_sid, account, ["inbound", "outbound"], params))
        run.join(streamer)
        joined = True
        run.wake()
        # The ticker sets ``done``; the bound is the stream's length plus the overall margin.
        await streamer.done
        if streamer.error is None:
            ws.send_text(_stop(streamer.seq0 + 2 * streamer.total, sid, call_sid, account))
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await closed.wait()
            except TimeoutError:
                streamer.closed_at = None
    finally:
        if not joined:
            run.gave_up()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        if not ws.closed:
            ws.abort()
    return streamer


# -- the reference run ------------------------------------------------------------------------
async def _bare_call(
    run: _StreamRun, port: int, index: int, start_at: float, frames_per_track: int
) -> _CallResult:
    loop = asyncio.get_running_loop()
    result = _CallResult(index, call_sid=_sid("CA"))
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    joined = False
    try:
        ws = await RawWebSocket.connect(f"ws://127.0.0.1:{port}/ws", timeout=CONNECT_TIMEOUT_S)
        sid, account = _sid("MZ"), _sid("AC")
        streamer = _Streamer(ws, sid, frames_per_track, seq0=2)
        closed = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, WebSocketError):
                while (await ws.receive())[0] != OP_CLOSE:
                    pass
            streamer.closed_at = loop.time()
            closed.set()
            streamer.fail("bare server closed the stream early")
            run.wake()

        watcher = asyncio.ensure_future(watch())
        try:
            ws.send_text(_connected())
            ws.send_text(_start(sid, result.call_sid, account, ["inbound", "outbound"], {}))
            run.join(streamer)
            joined = True
            run.wake()
            await streamer.done
            result.frames_sent = 2 * streamer.sent
            if streamer.error is not None:
                raise CallFailed(streamer.error)
            ws.send_text(_stop(streamer.seq0 + 2 * streamer.total, sid, result.call_sid, account))
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await closed.wait()
            if streamer.end_time is not None and streamer.closed_at is not None:
                result.stop_to_close_ms = (streamer.closed_at - streamer.end_time) * 1000
            result.completed = True
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if not ws.closed:
                ws.abort()
    except TimeoutError:
        result.error = "bare server: timed out"
    except CallFailed as exc:
        result.error = str(exc)
    except (OSError, WebSocketError, asyncio.IncompleteReadError) as exc:
        result.error = f"bare server: {type(exc).__name__}: {exc}"
    finally:
        if not joined:
            run.gave_up()
    return result


class ReferenceServer:
    """A bare reference server (``python -m MODULE ARGS --data-dir DIR``) as a subprocess.

    It prints ``ready <http-port> ...`` once listening; ``ready`` holds those fields. Shared by
    the Twilio and the Asterisk load tests, which differ only in which bare loop they start.
    """

    def __init__(self, module: str, args: list[str], label: str, start_timeout: float = 30) -> None:
        self.module, self.args, self.label = module, args, label
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.ready: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="ivr-loadtest-bare-")
        self._log = Path(self._dir.name) / "stderr.log"

    async def __aenter__(self) -> ReferenceServer:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        with self._log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                *self.args,
                "--data-dir",
                str(Path(self._dir.name) / "data"),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=str(root),
                env=env,
            )
        try:
            async with asyncio.timeout(self.start_timeout):
                assert self.proc.stdout is not None
                line = (await self.proc.stdout.readline()).decode().split()
            if len(line) < 2 or line[0] != "ready" or not line[1].isdigit():
                raise RuntimeError(f"{self.label} did not start")
            self.port = int(line[1])
            self.ready = line[1:]
        except (TimeoutError, RuntimeError):
            await self.__aexit__(None, None, None)
            tail = (
                self._log.read_text(errors="replace").strip()[-300:] if self._log.exists() else ""
            )
            raise CallFailed(f"{self.label} did not start: {tail or 'no output'}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._dir.cleanup()

    async def get_json(self, session: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        async with asyncio.timeout(CPU_READ_TIMEOUT_S):
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as resp:
                return await resp.json()


# -- the whole test ---------------------------------------------------------------------------
def _schedule(loop: asyncio.AbstractEventLoop, options: LoadtestOptions) -> list[float]:
    n, ramp = options.calls, options.resolved_ramp()
    t0 = loop.time() + 0.05
    return [t0 + (ramp * i / n if n > 1 else 0.0) for i in range(n)]


async def _gather_bounded(
    tasks: list[asyncio.Task[Any]],
    deadline: float,
    what: str,
    failed: Callable[[int, str], Any] = lambda i, error: _CallResult(i, error=error),
) -> list[Any]:
    """Each task's result, or ``failed(index, why)`` for those that did not finish in time."""
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    results = []
    for i, task in enumerate(tasks):
        if task.done() and not task.cancelled() and task.exception() is None:
            results.append(task.result())
        else:
            error = (
                f"{what}: overall deadline ({deadline:.0f} s) reached"
                if task in pending or task.cancelled()
                else f"{what}: {type(task.exception()).__name__}: {task.exception()}"
            )
            results.append(failed(i, error))
    return results


class _Progress:
    def __init__(self, options: LoadtestOptions) -> None:
        self.interval = options.progress_interval
        self.stream = options.progress_stream or sys.stderr
        self.task: asyncio.Task[None] | None = None

    def start(self, label: str, line: Callable[[], str]) -> None:
        if self.interval <= 0:
            return
        t0 = time.monotonic()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                print(f"[{label} {time.monotonic() - t0:6.1f}s] {line()}", file=self.stream)
                with contextlib.suppress(AttributeError, OSError):
                    self.stream.flush()

        self.task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


def _errors(results: Sequence[_CallResult]) -> list[str]:
    return [f"call {r.index}: {r.error}" for r in results if r.error][:MAX_ERRORS_REPORTED]


async def _run_service(
    options: LoadtestOptions, session: aiohttp.ClientSession, progress: _Progress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    base = options.url.rstrip("/")

    async def read_cpu() -> float:
        async with session.get(f"{base}/healthz") as resp:
            return float((await resp.json())["cpu_seconds"])

    run = _StreamRun(options.calls, read_cpu)
    ctx = _Context(
        options=options,
        base=base,
        token=options.resolved_token(),
        press=options.resolved_press(),
        session=session,
        run=run,
        frames_per_track=max(1, round(options.duration / FRAME_S)),
    )
    progress.start(
        "service",
        lambda: (
            f"set up {ctx.set_up}/{options.calls}, streaming {len(run.active)}, "
            f"finished {ctx.finished} (failed {ctx.failed}), frames sent {run.frames_sent}, "
            f"tick late p99 {_fmt(run.ticker_stats()['late_p99_ms'])} ms"
        ),
    )
    t_start = loop.time()
    tasks = [
        asyncio.ensure_future(_service_call(ctx, i, at))
        for i, at in enumerate(_schedule(loop, options))
    ]
    try:
        results = await _gather_bounded(tasks, options.deadline(), "call")
    finally:
        await progress.stop()
        await run.stop()
    completed = [r for r in results if r.completed]
    expected = sum(r.frames_sent + r.frames_sent_consent for r in completed)
    stored = sum(r.frames_stored for r in completed)
    webhooks = [x for v in ctx.latencies.values() for x in v]
    return {
        "calls_attempted": options.calls,
        "calls_completed": len(completed),
        "calls_failed": options.calls - len(completed),
        "errors": _errors(results),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_sent_consent": sum(r.frames_sent_consent for r in completed),
        "frames_expected": expected,
        "frames_stored": stored,
        "frames_lost": expected - stored,
        "server_frames_lost": sum(r.server_frames_lost for r in results),
        "webhook_ms": {**_dist(webhooks), **{k: _dist(v) for k, v in ctx.latencies.items()}},
        "first_prompt_ms": _dist([r.first_prompt_ms for r in results if r.first_prompt_ms]),
        "stop_to_close_ms": _dist(
            [r.stop_to_close_ms for r in results if r.stop_to_close_ms is not None]
        ),
        "cost": run.cost(options.duration),
        "ticker": run.ticker_stats(),
        "elapsed_s": round(loop.time() - t_start, 1),
    }


async def _run_reference(
    options: LoadtestOptions, session: aiohttp.ClientSession, progress: _Progress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    bare_server = ReferenceServer(
        "ivr.harness.bare_server", ["--port", "0"], "bare server", start_timeout=20
    )
    async with bare_server as bare:

        async def read_cpu() -> float:
            return float((await bare.get_json(session, "/cpu"))["cpu_seconds"])

        run = _StreamRun(options.calls, read_cpu)
        frames = max(1, round(options.duration / FRAME_S))
        finished = [0]
        progress.start(
            "bare",
            lambda: (
                f"streaming {len(run.active)}/{options.calls}, frames sent {run.frames_sent}, "
                f"tick late p99 {_fmt(run.ticker_stats()['late_p99_ms'])} ms"
            ),
        )
        t_start = loop.time()

        async def one(i: int, at: float) -> _CallResult:
            try:
                return await _bare_call(run, bare.port, i, at, frames)
            finally:
                finished[0] += 1

        tasks = [asyncio.ensure_future(one(i, at)) for i, at in enumerate(_schedule(loop, options))]
        try:
            results = await _gather_bounded(tasks, options.deadline(), "reference stream")
        finally:
            await progress.stop()
            await run.stop()
        try:
            async with asyncio.timeout(CPU_READ_TIMEOUT_S):
                received = int((await bare.get_json(session, "/stats"))["frames"])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            received = None
    completed = [r for r in results if r.completed]
    return {
        "streams": options.calls,
        "streams_completed": len(completed),
        "streams_failed": options.calls - len(completed),
        "errors": _errors(results),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_received": received,
        "stop_to_close_ms": _dist(
            [r.stop_to_close_ms for r in results if r.stop_to_close_ms is not None]
        ),
        "cost": run.cost(options.duration),
        "ticker": run.ticker_stats(),
        "elapsed_s": round(loop.time() - t_start, 1),
    }


async def run_loadtest(options: LoadtestOptions | argparse.Namespace) -> dict[str, Any]:
    """Run the load test (and the bare reference unless disabled); the report as a dict."""
    if isinstance(options, argparse.Namespace):
        options = options_from_args(options)
    _validate(options)
    base = urlsplit(options.url)
    if base.scheme != "http" or not base.hostname:
        raise ValueError(f"--url must be an http:// URL, not {options.url!r}")
    progress = _Progress(options)
    timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=100, force_close=False)
    report: dict[str, Any] = {
        "url": options.url,
        "to": options.to,
        "press": options.resolved_press() or None,
        "calls": options.calls,
        "duration_s": options.duration,
        "ramp_s": options.resolved_ramp(),
    }
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        report["service"] = await _run_service(options, session, progress)
        await run_reference(
            report,
            options.reference,
            "no call completed against the service"
            if report["service"]["calls_completed"] == 0
            else None,
            lambda: _run_reference(options, session, progress),
        )
    _summarise(report)
    return report


async def run_reference(
    report: dict[str, Any],
    wanted: bool,
    skip: str | None,
    run: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """The bare reference run, unless not wanted or pointless (``skip`` says why)."""
    report["reference"] = None
    report["reference_error"] = None
    if wanted and skip:
        report["reference_error"] = f"skipped: {skip}"
    elif wanted:
        try:
            report["reference"] = await run()
        except CallFailed as exc:
            report["reference_error"] = str(exc)


def summarise_shared(
    report: dict[str, Any], keys: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What both platforms' reports put at the top: counts, latencies, CPU and the ratio."""
    service = report["service"]
    ours = service["cost"].get("server_cpu_per_call_minute")
    ref = report["reference"]
    bare = ref["cost"].get("server_cpu_per_call_minute") if ref else None
    for key in keys:
        report[key] = service[key]
    report["errors"] = (service["errors"] + (ref["errors"] if ref else []))[:MAX_ERRORS_REPORTED]
    report["first_prompt_p50_ms"] = service["first_prompt_ms"]["p50"]
    report["first_prompt_p99_ms"] = service["first_prompt_ms"]["p99"]
    report["sender_cpu_utilisation"] = service["cost"].get("sender_cpu_utilisation")
    report["ticker_late_p99_ms"] = service["ticker"]["late_p99_ms"]
    report["server_cpu_per_call_minute"] = ours
    report["bare_cpu_per_call_minute"] = bare
    report["cpu_ratio"] = round(ours / bare, 3) if ours and bare else None
    return service, ref


def _summarise(report: dict[str, Any]) -> None:
    keys = (
        "calls_attempted",
        "calls_completed",
        "calls_failed",
        "frames_sent",
        "frames_stored",
        "frames_lost",
    )
    service, ref = summarise_shared(report, keys)
    report["webhook_p50_ms"] = service["webhook_ms"]["p50"]
    report["webhook_p99_ms"] = service["webhook_ms"]["p99"]
    # A service that cannot keep up uses a whole core whatever the load: its CPU per
    # call-minute (and the ratio) then understate the real cost. The stop->close delay shows
    # how far behind real time it ended up.
    utilisation = service["cost"].get("server_cpu_utilisation") or 0.0
    lag = service["stop_to_close_ms"]["p99"] or 0.0
    report["service_saturated"] = utilisation >= SATURATED_UTILISATION or lag >= SATURATED_LAG_MS
    reference_ok = ref is None or ref["streams_failed"] == 0
    report["ok"] = (
        service["calls_failed"] == 0
        and service["frames_lost"] == 0
        and report["reference_error"] is None
        and reference_ok
    )


def _validate(options: LoadtestOptions) -> None:
    if options.calls < 1:
        raise ValueError("--calls must be at least 1")
    if not options.duration >= FRAME_S:
        raise ValueError("--duration must be at least 0.02 s")
    if options.ramp is not None and options.ramp < 0:
        raise ValueError("--ramp must not be negative")
    press = options.resolved_press()
    if press and (len(press) != 1 or press not in "0123456789*#ABCD"):
        raise ValueError(f"--press {press!r} is not one DTMF digit")


# -- output -----------------------------------------------------------------------------------
def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if abs(x) < 1 else f"{x:,.1f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x}{unit}"


def format_report(report: dict[str, Any]) -> str:
    s = report["service"]
    ref = report.get("reference")
    cost, tick = s["cost"], s["ticker"]
    rows: list[tuple[str, str]] = [
        (
            "calls",
            f"{s['calls_completed']}/{s['calls_attempted']} completed, {s['calls_failed']} failed"
            f"  ({report['duration_s']:g} s recording each, ramp {report['ramp_s']:g} s,"
            f" to {report['to']}{', press ' + report['press'] if report['press'] else ''})",
        ),
        (
            "frames",
            f"sent {_fmt(s['frames_sent'])} (+{_fmt(s['frames_sent_consent'])} on the consent "
            f"stream), stored {_fmt(s['frames_stored'])}, lost {_fmt(s['frames_lost'])}",
        ),
        (
            "webhooks ms",
            f"p50 {_fmt(s['webhook_ms']['p50'])}  p99 {_fmt(s['webhook_ms']['p99'])}  "
            f"max {_fmt(s['webhook_ms']['max'])}  (n={s['webhook_ms']['count']})",
        ),
        (
            "first prompt ms",
            f"p50 {_fmt(s['first_prompt_ms']['p50'])}  p99 {_fmt(s['first_prompt_ms']['p99'])}",
        ),
        (
            "stop->close ms",
            f"p50 {_fmt(s['stop_to_close_ms']['p50'])}  p99 {_fmt(s['stop_to_close_ms']['p99'])}",
        ),
    ]

    def cost_rows(label: str, c: dict[str, Any], t: dict[str, Any]) -> None:
        if not c.get("window"):
            rows.append((label, "no CPU window measured"))
            return
        rows.append(
            (
                label,
                f"{_fmt(c['server_cpu_per_call_minute'])} CPU s per call-minute "
                f"({_fmt(c['server_cpu_utilisation'] * 100)}% of a core, "
                f"{c['concurrent_calls']:g} calls over {c['window_s']:g} s, {c['window']})",
            )
        )
        rows.append(
            (
                "  sender",
                f"{_fmt(c['sender_cpu_utilisation'] * 100)}% of a core; ticker late p50 "
                f"{_fmt(t['late_p50_ms'])} p99 {_fmt(t['late_p99_ms'])} max "
                f"{_fmt(t['late_max_ms'])} ms; max send backlog "
                f"{_fmt(t['max_send_backlog_bytes'])} B",
            )
        )

    cost_rows("service cpu", cost, tick)
    if ref:
        cost_rows("bare cpu", ref["cost"], ref["ticker"])
        rows.append(
            (
                "  bare streams",
                f"{ref['streams_completed']}/{ref['streams']} completed, frames sent "
                f"{_fmt(ref['frames_sent'])}, received {_fmt(ref['frames_received'])}",
            )
        )
        ratio = report["cpu_ratio"]
        rows.append(("cpu ratio", f"{ratio:.2f} (service / bare)" if ratio else "-"))
    elif report.get("reference_error"):
        rows.append(("bare cpu", f"failed: {report['reference_error']}"))
    if report.get("service_saturated"):
        rows.append(
            (
                "warning",
                "the service could not keep up (saturated CPU or stop->close p99 "
                f"{_fmt(s['stop_to_close_ms']['p99'])} ms): its CPU per call-minute understates "
                "its cost",
            )
        )
    errors = list(s["errors"]) + (list(ref["errors"]) if ref else [])
    for i, error in enumerate(errors[:MAX_ERRORS_REPORTED]):
        rows.append(("errors" if i == 0 else "", error))
    rows.append(("result", "OK" if report["ok"] else "FAILED"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# -- command line -----------------------------------------------------------------------------
def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``loadtest`` to an ``add_subparsers()`` object; its ``func`` is ``run_loadtest_cli``."""
    p = subparsers.add_parser(
        "loadtest",
        help="many simulated calls (Twilio or Asterisk) at once against a running service",
        description=(
            "Run N simulated Twilio calls concurrently against a running service (consent "
            "phase in fast virtual time, recording streams of both tracks in real time), "
            "measure the service's CPU per call-minute, and compare it with a bare aiohttp "
            "receive+decode+seal loop under the same load. With --platform asterisk, a fake "
            "Asterisk at --ari-listen (the service's [asterisk] url) delivers the calls and "
            "streams their RTP instead (ivr.harness.loadtest_asterisk). Exit 0 when every call "
            "completed and no frame was lost."
        ),
    )
    _add_options(p)
    p.set_defaults(func=run_loadtest_cli)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--platform",
        choices=("twilio", "asterisk"),
        default="twilio",
        help="twilio: act as Twilio against --url; asterisk: act as an Asterisk PBX that the "
        "service's [asterisk] url points at (default twilio)",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds of recording stream per call, in real time (default 20)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="spread the call starts over this many seconds (default min(10, calls/50))",
    )
    p.add_argument(
        "--to",
        default=None,
        help=f"the dialled line (default {DEFAULT_TO}; asterisk: +15550100004, which records "
        "at once)",
    )
    p.add_argument(
        "--from", dest="from_", metavar="NUMBER", default=DEFAULT_FROM, help="the caller's number"
    )
    p.add_argument(
        "--press",
        default=None,
        help="key pressed during the consent prompt ('' for none; default 1 on opt-in lines)",
    )
    p.add_argument(
        "--auth-token",
        default=None,
        help=f"Twilio auth token for signing (default ${AUTH_TOKEN_ENV}, else the demo token)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the bare reference comparison")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=3.0,
        help="seconds between progress lines on stderr (0: none; default 3)",
    )
    from ivr.harness.loadtest_asterisk import add_asterisk_options  # imports this module

    add_asterisk_options(p)


def options_from_args(args: argparse.Namespace) -> LoadtestOptions:
    return LoadtestOptions(
        url=args.url,
        calls=args.calls,
        duration=args.duration,
        ramp=args.ramp,
        to=args.to or DEFAULT_TO,
        from_=getattr(args, "from_", DEFAULT_FROM),
        press=getattr(args, "press", None),
        auth_token=args.auth_token,
        reference=not args.no_reference,
        progress_interval=getattr(args, "progress_interval", 3.0),
    )


def run_loadtest_cli(args: argparse.Namespace) -> int:
    if getattr(args, "platform", "twilio") == "asterisk":
        from ivr.harness.loadtest_asterisk import run_asterisk_loadtest_cli

        return run_asterisk_loadtest_cli(args)
    try:
        options = options_from_args(args)
        _validate(options)
        report = asyncio.run(run_loadtest(options))
    except ValueError as exc:
        print(f"ivr loadtest: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ivr.harness.loadtest", description="ivr loadtest (standalone)"
    )
    _add_options(parser)
    return run_loadtest_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
