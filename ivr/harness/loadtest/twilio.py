"""``ivr loadtest``: many simulated Twilio calls at once, and what they cost the service.

Each call does what Twilio does (``ivr.harness.twilio_wire``): the signed voice webhook, the
consent stream in virtual time (the prompt is "played" by counting the audio the service sends,
media timestamps move the call clock, the accept key is pressed half a second into the prompt
and marks are echoed once their audio has played; after each step the driver syncs with the
service, ``twilio_wire.Inbox.sync``), the signed continue webhook, the recording stream with
both tracks in REAL time (fed by the shared ticker, ``core.StreamRun``, from pre-built byte
templates), and the signed status callback, whose answer says how many frames the service
stored. The same streaming load then goes to ``bench/reference/bare_ws_server.py``.

Frame accounting: ``frames_sent`` counts recording-stream frames (both tracks). On the opt-in
line the frames of the consent stream sent after the accept key (while the "recording started"
prompt plays) are recorded too; they are counted separately as ``frames_sent_consent``.
``frames_lost`` = sent + sent_consent − stored, over the calls that completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ivr.harness import twilio_wire as wire
from ivr.harness.audio import tone
from ivr.harness.loadtest.core import (
    FRAME_MS,
    FRAME_S,
    SATURATED_LAG_MS,
    SATURATED_UTILISATION,
    CallFailed,
    Options,
    Progress,
    ReferenceServer,
    StreamRun,
    TickedStream,
    dist,
    errors,
    fmt,
    reference_rows,
    render,
    run_calls,
    run_reference,
    summarise_shared,
)
from ivr.harness.twilio_wire import AUTH_TOKEN_ENV, DEFAULT_TO, DEMO_AUTH_TOKEN, Inbox
from ivr.harness.wsclient import OP_CLOSE, RawWebSocket, WebSocketError, frame_header

__all__ = ["LoadtestOptions", "format_report", "run_loadtest"]

PRESS_AFTER_S = 0.5  # call time into the prompt at which the accept key is pressed
IDLE_ADVANCE_S = 0.5  # call time sent when the service is waiting for time to pass
MAX_CONSENT_CALL_S = 120.0  # a consent phase longer than this (call time) is a failure
WEBHOOK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15.0
SYNC_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 30.0

_TONE = tone(440.0, -24.0)
POOL: tuple[bytes, ...] = tuple(_TONE.payload(i).encode() for i in range(len(_TONE)))  # 1 s
_POOL_N = len(POOL)
_HALF_POOL = _POOL_N // 2


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

    def __init__(self, ws: RawWebSocket, stream_sid: str, total: int, seq0: int) -> None:
        super().__init__(total)  # frames per track
        self.ws = ws
        self.tmpl_in = wire.media_template(stream_sid, "inbound")
        self.tmpl_out = wire.media_template(stream_sid, "outbound")
        self.seq0 = seq0  # sequence number of the first media message
        self.closed_at: float | None = None

    def pump(self, due: int) -> int:
        target = min(due - self.join_tick, self.total)
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


def _stream_run(expected: int, read_cpu: Any) -> StreamRun:
    backlog = [0]

    def note_backlog(streams: list[_Streamer]) -> None:
        backlog[0] = max(backlog[0], max(s.ws.buffered for s in streams))

    return StreamRun(
        expected,
        read_cpu,
        send_errors=(OSError, RuntimeError),
        send_failure="stream write failed",
        extra_stats=lambda run: {"max_send_backlog_bytes": backlog[0]},
        on_tick=note_backlog,
    )


async def _stream_two_tracks(
    run: StreamRun, url: str, call_sid: str, account: str, params: dict[str, str], frames: int
) -> _Streamer:
    """Open a two-track stream, stream it in real time via the ticker, stop, wait for the close.

    Joins the run, or tells it that this call gave up, exactly once, whatever happens."""
    joined = False
    try:
        try:
            ws = await RawWebSocket.connect(url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise CallFailed(f"stream: cannot connect: {exc or type(exc).__name__}") from None
        except WebSocketError as exc:
            raise CallFailed(f"stream: {exc}") from None
        sid = wire.new_sid("MZ")
        streamer = _Streamer(ws, sid, frames, seq0=2)
        closed = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, WebSocketError):
                while (await ws.receive())[0] != OP_CLOSE:
                    pass
            streamer.closed_at = run.loop.time()
            closed.set()
            reason = f"{ws.close_code} {ws.close_reason}".strip() if ws.close_code else "dropped"
            streamer.fail(f"stream closed by the server after {streamer.sent} frames: {reason}")
            run.wake()

        watcher = asyncio.ensure_future(watch())
        try:
            ws.send_text(wire.connected())
            ws.send_text(wire.start(sid, call_sid, account, ["inbound", "outbound"], params))
            run.join(streamer)
            joined = True
            await streamer.done  # the ticker sets it; bounded by the overall deadline
            if streamer.error is None:
                ws.send_text(wire.stop(streamer.seq0 + 2 * streamer.total, sid, call_sid, account))
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
        return streamer
    finally:
        if not joined:
            run.gave_up()


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
    session: aiohttp.ClientSession
    run: StreamRun
    frames_per_track: int
    account_sid: str = field(default_factory=lambda: wire.new_sid("AC"))
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"voice": [], "continue": [], "status": []}
    )
    set_up: int = 0
    finished: int = 0
    failed: int = 0

    async def webhook(self, kind: str, url: str, call_sid: str, status: str, **extra: str) -> str:
        o = self.options
        params = wire.call_form(call_sid, self.account_sid, o.to, o.from_, status, **extra)
        headers = wire.signed_headers(o.resolved_token(), url, params)
        t = time.perf_counter()
        try:
            async with asyncio.timeout(WEBHOOK_TIMEOUT_S):
                async with self.session.post(url, data=params, headers=headers) as resp:
                    body = await resp.text()
        except TimeoutError:
            raise CallFailed(f"{kind} webhook: no answer in {WEBHOOK_TIMEOUT_S:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise CallFailed(f"{kind} webhook: {type(exc).__name__}: {exc}") from None
        self.latencies[kind].append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise CallFailed(f"{kind} webhook: HTTP {resp.status}: {body.strip()[:120]}")
        return body


def _stream_in(body: str, verb: str, kind: str) -> tuple[ET.Element, str, dict[str, str]]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise CallFailed(f"{kind} webhook: answer is not TwiML ({exc})") from None
    found = wire.stream_of(root, verb)
    if found is None:
        verbs = " ".join(child.tag for child in root) or "nothing"
        raise CallFailed(f"{kind} webhook: no <{verb}><Stream> in the answer (got {verbs})")
    return root, *found


async def _service_call(ctx: _Context, index: int, start_at: float) -> _CallResult:
    loop = asyncio.get_running_loop()
    result = _CallResult(index, call_sid=wire.new_sid("CA"))
    call_sid = result.call_sid
    joined = False
    voice_done = False
    began = 0.0
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    try:
        began = loop.time()
        body = await ctx.webhook("voice", f"{ctx.base}/twilio/voice", call_sid, "ringing")
        voice_done = True
        root, stream_url, params = _stream_in(body, "Connect", "voice")
        redirect = root.find("Redirect")
        next_url = (redirect.text or "").strip() if redirect is not None else ""
        if not next_url:
            raise CallFailed("voice webhook: no <Redirect> after the consent stream")
        await _consent_phase(ctx, result, stream_url, params)
        body = await ctx.webhook("continue", next_url, call_sid, "in-progress")
        _, rec_url, rec_params = _stream_in(body, "Start", "continue")
        ctx.set_up += 1
        joined = True
        try:
            streamer = await _stream_two_tracks(
                ctx.run, rec_url, call_sid, ctx.account_sid, rec_params, ctx.frames_per_track
            )
        except CallFailed as exc:
            raise CallFailed(f"recording {exc}") from None
        result.frames_sent = 2 * streamer.sent
        if streamer.error is not None:
            raise CallFailed(f"recording {streamer.error}")
        if streamer.closed_at is not None and streamer.end_time is not None:
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
                "status", f"{ctx.base}/twilio/status", call_sid, "completed", CallDuration=duration
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
    driver = _ConsentDriver(ctx, result, ws, params)
    try:
        async with asyncio.timeout(WEBHOOK_TIMEOUT_S + MAX_CONSENT_CALL_S):
            await driver.run()
    except TimeoutError:
        raise CallFailed("consent stream: the service never finished the consent phase") from None
    finally:
        driver.inbox.cancel()
        if not ws.closed:
            ws.abort()


class _ConsentDriver:
    """Plays Twilio on the consent stream: the call clock moves only with the media we send."""

    def __init__(
        self, ctx: _Context, result: _CallResult, ws: RawWebSocket, params: dict[str, str]
    ) -> None:
        self.ctx, self.result, self.ws, self.params = ctx, result, ws, params
        self.inbox = Inbox(ws)
        self.sid = wire.new_sid("MZ")
        self.tmpl = wire.media_template(self.sid, "inbound")
        self.seq = 1
        self.frames = 0  # frames sent; call time covered = frames * 20 ms
        self.playback = wire.Playback(0.0)
        self.frames_at_press: int | None = None
        self.accepted = False  # the service answered the key with ``clear``: recording
        self.frames_at_last_echo = 0

    @property
    def now(self) -> float:
        return self.frames * FRAME_S

    async def run(self) -> None:
        ws, press = self.ws, self.ctx.options.resolved_press()
        ws.send_text(wire.connected())
        ws.send_text(
            wire.start(
                self.sid, self.result.call_sid, self.ctx.account_sid, ["inbound"], self.params
            )
        )
        start_sent = time.perf_counter()
        await self._sync()
        while not self.inbox.closed:
            due = self.playback.next_due()
            if press and self.frames_at_press is None and due is not None:
                # The prompt is queued: press the key a moment into it.
                self._advance(self.now + PRESS_AFTER_S)
                ws.send_text(wire.dtmf(self._next_seq(), self.sid, press))
                self.frames_at_press = self.frames
            elif due is not None:
                self._advance(due)
                for name in self.playback.due(self.now):
                    ws.send_text(wire.mark(self._next_seq(), self.sid, name))
                    self.frames_at_last_echo = self.frames
            elif self.now > MAX_CONSENT_CALL_S:
                raise CallFailed("consent stream: still open after 120 s of call time")
            else:
                self._advance(self.now + IDLE_ADVANCE_S)
            await self._sync()
        if self.inbox.first_at is not None:
            self.result.first_prompt_ms = (self.inbox.first_at - start_sent) * 1000
        code, reason = self.inbox.close_code, self.inbox.close_reason
        if code != 1000:
            raise CallFailed(f"consent stream closed by the service: {code} {reason}".rstrip())
        if self.accepted and self.frames_at_last_echo > (self.frames_at_press or 0):
            # Sent after the key and before the echo that ended the stream: recorded.
            self.result.frames_sent_consent = self.frames_at_last_echo - (self.frames_at_press or 0)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _advance(self, until: float) -> None:
        """Send inbound frames until the call clock reaches ``until``."""
        parts: list[bytes] = []
        tmpl, n = self.tmpl, self.frames
        while n * FRAME_S < until - 1e-9:
            m = tmpl % (self._next_seq(), n + 1, n * FRAME_MS, POOL[n % _POOL_N])
            parts.append(frame_header(len(m)))
            parts.append(m)
            n += 1
        self.frames = n
        if parts:
            self.ws.write_raw(b"".join(parts))

    async def _sync(self) -> None:
        for _, data in await self.inbox.sync(SYNC_TIMEOUT_S):
            message = wire.read_server_message(data)
            if message.event == "media":
                self.playback.audio(self.now, message.audio_bytes)
            elif message.event == "mark":
                self.playback.mark(self.now, message.name)
            elif message.event == "clear":
                self.accepted = self.frames_at_press is not None
                self.playback.clear(self.now)  # Twilio echoes the pending marks at once


# -- the runs ---------------------------------------------------------------------------------
def _failed(index: int, error: str) -> _CallResult:
    return _CallResult(index, error=error)


async def _run_service(
    options: LoadtestOptions, session: aiohttp.ClientSession, progress: Progress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    base = options.url.rstrip("/")

    async def read_cpu() -> float:
        async with session.get(f"{base}/healthz") as resp:
            return float((await resp.json())["cpu_seconds"])

    run = _stream_run(options.calls, read_cpu)
    ctx = _Context(
        options=options,
        base=base,
        session=session,
        run=run,
        frames_per_track=max(1, round(options.duration / FRAME_S)),
    )
    t_start = loop.time()
    results = await run_calls(
        options,
        run,
        progress,
        "service",
        lambda: (
            f"set up {ctx.set_up}/{options.calls}, finished {ctx.finished} (failed "
            f"{ctx.failed}), {run.progress(options.calls)}"
        ),
        lambda i, at: _service_call(ctx, i, at),
        _failed,
        options.deadline(),
    )
    completed = [r for r in results if r.completed]
    expected = sum(r.frames_sent + r.frames_sent_consent for r in completed)
    stored = sum(r.frames_stored for r in completed)
    webhooks = [x for v in ctx.latencies.values() for x in v]
    return {
        "calls_attempted": options.calls,
        "calls_completed": len(completed),
        "calls_failed": options.calls - len(completed),
        "errors": errors(results),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_sent_consent": sum(r.frames_sent_consent for r in completed),
        "frames_expected": expected,
        "frames_stored": stored,
        "frames_lost": expected - stored,
        "server_frames_lost": sum(r.server_frames_lost for r in results),
        "webhook_ms": {**dist(webhooks), **{k: dist(v) for k, v in ctx.latencies.items()}},
        "first_prompt_ms": dist([r.first_prompt_ms for r in results if r.first_prompt_ms]),
        "stop_to_close_ms": dist(
            [r.stop_to_close_ms for r in results if r.stop_to_close_ms is not None]
        ),
        "cost": run.cost(options.duration),
        "ticker": run.ticker_stats(),
        "elapsed_s": round(loop.time() - t_start, 1),
    }


async def _bare_call(run: StreamRun, port: int, index: int, at: float, frames: int) -> _CallResult:
    loop = asyncio.get_running_loop()
    result = _CallResult(index, call_sid=wire.new_sid("CA"))
    await asyncio.sleep(max(0.0, at - loop.time()))
    url, account = f"ws://127.0.0.1:{port}/ws", wire.new_sid("AC")
    try:
        try:
            streamer = await _stream_two_tracks(run, url, result.call_sid, account, {}, frames)
        except CallFailed as exc:
            raise CallFailed(f"bare server: {exc}") from None
        result.frames_sent = 2 * streamer.sent
        if streamer.error is not None:
            raise CallFailed(f"bare server: {streamer.error}")
        if streamer.closed_at is None:
            raise CallFailed("bare server: timed out")
        if streamer.end_time is not None:
            result.stop_to_close_ms = (streamer.closed_at - streamer.end_time) * 1000
        result.completed = True
    except CallFailed as exc:
        result.error = str(exc)
    return result


async def _run_reference(
    options: LoadtestOptions, session: aiohttp.ClientSession, progress: Progress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    server = ReferenceServer("bare_ws_server.py", ["--port", "0"], "bare server", 20)
    async with server as bare:
        run = _stream_run(options.calls, lambda: bare.read_cpu(session))
        frames = max(1, round(options.duration / FRAME_S))
        t_start = loop.time()
        results = await run_calls(
            options,
            run,
            progress,
            "bare",
            lambda: run.progress(options.calls),
            lambda i, at: _bare_call(run, bare.port, i, at, frames),
            _failed,
            options.deadline(),
        )
        try:
            received: int | None = int((await bare.get_json(session, "/stats"))["frames"])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            received = None
    completed = [r for r in results if r.completed]
    return {
        "streams": options.calls,
        "streams_completed": len(completed),
        "streams_failed": options.calls - len(completed),
        "errors": errors(results),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_received": received,
        "stop_to_close_ms": dist(
            [r.stop_to_close_ms for r in results if r.stop_to_close_ms is not None]
        ),
        "cost": run.cost(options.duration),
        "ticker": run.ticker_stats(),
        "elapsed_s": round(loop.time() - t_start, 1),
    }


async def run_loadtest(options: LoadtestOptions) -> dict[str, Any]:
    """Run the load test (and the bare reference unless disabled); the report as a dict."""
    options.check()
    progress = Progress(options)
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
        completed = report["service"]["calls_completed"]
        await run_reference(
            report,
            options.reference,
            "no call completed against the service" if completed == 0 else None,
            lambda: _run_reference(options, session, progress),
        )
    _summarise(report)
    return report


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


def format_report(report: dict[str, Any]) -> str:
    s = report["service"]
    press = f", press {report['press']}" if report["press"] else ""
    rows: list[tuple[str, str]] = [
        (
            "calls",
            f"{s['calls_completed']}/{s['calls_attempted']} completed, {s['calls_failed']} failed"
            f"  ({report['duration_s']:g} s recording each, ramp {report['ramp_s']:g} s,"
            f" to {report['to']}{press})",
        ),
        (
            "frames",
            f"sent {fmt(s['frames_sent'])} (+{fmt(s['frames_sent_consent'])} on the consent "
            f"stream), stored {fmt(s['frames_stored'])}, lost {fmt(s['frames_lost'])}",
        ),
        (
            "webhooks ms",
            f"p50 {fmt(s['webhook_ms']['p50'])}  p99 {fmt(s['webhook_ms']['p99'])}  "
            f"max {fmt(s['webhook_ms']['max'])}  (n={s['webhook_ms']['count']})",
        ),
        (
            "first prompt ms",
            f"p50 {fmt(s['first_prompt_ms']['p50'])}  p99 {fmt(s['first_prompt_ms']['p99'])}",
        ),
        (
            "stop->close ms",
            f"p50 {fmt(s['stop_to_close_ms']['p50'])}  p99 {fmt(s['stop_to_close_ms']['p99'])}",
        ),
        *reference_rows(report),
    ]
    if report.get("service_saturated"):
        rows.append(
            (
                "warning",
                "the service could not keep up (saturated CPU or stop->close p99 "
                f"{fmt(s['stop_to_close_ms']['p99'])} ms): its CPU per call-minute understates "
                "its cost",
            )
        )
    return render(rows, report)
