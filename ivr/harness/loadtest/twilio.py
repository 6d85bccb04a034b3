"""``ivr loadtest``: many simulated Twilio calls at once, and what they cost the service.

Each call is the simulator's (``ivr.harness.twilio_sim``, in fast mode): the signed voice
webhook, the consent stream in virtual time (the accept key half a second into the prompt on
opt-in lines), the signed continue webhook; then it hands the recording stream over, and this
module streams both tracks in REAL time, fed by the shared ticker (``core.StreamRun``) from
pre-built byte templates; then the signed status callback, whose answer says how many frames the
service stored. The same streaming load then goes to ``bench/reference/bare_ws_server.py``.

Frame accounting: ``frames_sent`` counts recording-stream frames (both tracks). On the opt-in
line the frames of the consent stream sent after the accept key (while the "recording started"
prompt plays) are recorded too; they are counted separately as ``frames_sent_consent``.
``frames_lost`` = sent + sent_consent − stored, over the calls that completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from ivr.harness.twilio_sim import CallOptions, StreamStart, simulate_call
from ivr.harness.twilio_wire import AUTH_TOKEN_ENV, DEFAULT_TO, DEMO_AUTH_TOKEN
from ivr.harness.wsclient import OP_CLOSE, RawWebSocket, WebSocketError, frame_header

__all__ = ["LoadtestOptions", "format_report", "run_loadtest"]

PRESS_AFTER_S = 0.5  # call time into the prompt at which the accept key is pressed
SYNC_FRAMES = 25  # the consent phase syncs with the service every 0.5 s of call time
MAX_CONSENT_CALL_S = 120.0  # a consent phase longer than this (call time) is a failure
WEBHOOK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15.0
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


async def _stream_two_tracks(run: StreamRun, start: StreamStart, frames: int) -> _Streamer:
    """Open a two-track stream, stream it in real time via the ticker, stop, wait for the close.

    Joins the run, or tells it that this call gave up, exactly once, whatever happens."""
    joined = False
    try:
        try:
            ws = await RawWebSocket.connect(start.url, timeout=CONNECT_TIMEOUT_S)
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
            ws.send_text(
                wire.start(sid, start.call_sid, start.account_sid, start.tracks, start.params)
            )
            run.join(streamer)
            joined = True
            await streamer.done  # the ticker sets it; bounded by the overall deadline
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
    first_prompt_ms: float | None = None
    stop_to_close_ms: float | None = None


@dataclass
class _Context:
    options: LoadtestOptions
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


async def _service_call(ctx: _Context, index: int, start_at: float) -> _CallResult:
    """One call as Twilio places it: the simulator (``twilio_sim``) does the webhooks and the
    consent stream in virtual time, and hands the recording stream over to the ticker."""
    o = ctx.options
    result = _CallResult(index, call_sid=wire.new_sid("CA"))
    await asyncio.sleep(max(0.0, start_at - asyncio.get_running_loop().time()))
    recording: list[_Streamer | CallFailed] = []

    async def stream_recording(start: StreamStart) -> None:
        ctx.set_up += 1
        try:
            recording.append(await _stream_two_tracks(ctx.run, start, ctx.frames_per_track))
        except CallFailed as exc:
            recording.append(exc)

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
        http_timeout=WEBHOOK_TIMEOUT_S,
        wall_timeout=o.deadline(),
        account_sid=ctx.account_sid,
        call_sid=result.call_sid,
        sync_frames=SYNC_FRAMES,
    )
    try:
        call = await simulate_call(options, ctx.session, on_start_stream=stream_recording)
    finally:
        if not recording:
            ctx.run.gave_up()  # it never reached its recording stream
    # The simulator times every webhook in order: voice, continue, and the status callback.
    latencies = list(call.webhook_latency_ms)
    if call.status_response is not None and latencies:
        ctx.latencies["status"].append(latencies.pop())
    for kind, ms in zip(("voice", "continue"), latencies, strict=False):
        ctx.latencies[kind].append(ms)
    status = call.status_response or {}
    result.frames_stored = int(status.get("frames_stored") or 0)
    result.server_frames_lost = int(status.get("frames_lost") or 0)
    result.first_prompt_ms = call.first_prompt_frame_latency_ms
    if call.decision == "accepted":  # recorded from the key on, on the consent stream too
        result.frames_sent_consent = call.frames_after_key
    refused = [code for code in call.closed_by_server if code != 1000]
    streamer = recording[0] if recording else None
    if call.error is not None:
        result.error = call.error
    elif refused:
        result.error = f"consent stream closed by the service: {refused[0]}"
    elif isinstance(streamer, CallFailed):
        result.error = f"recording {streamer}"
    elif streamer is None:
        result.error = f"no recording stream (decision {call.decision or '-'})"
    else:
        result.frames_sent = 2 * streamer.sent
        if streamer.error is not None:
            result.error = f"recording {streamer.error}"
        elif streamer.closed_at is not None and streamer.end_time is not None:
            result.stop_to_close_ms = (streamer.closed_at - streamer.end_time) * 1000
    if result.error is None and call.recording_status != "complete":
        result.error = (
            f"recording {call.recording_id or '-'} ended "
            f"{call.recording_status or 'without a recording'} (decision {call.decision or '-'})"
        )
    result.completed = result.error is None
    ctx.finished += 1
    ctx.failed += not result.completed
    return result


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
    start = StreamStart(
        f"ws://127.0.0.1:{port}/ws",
        {},
        ["inbound", "outbound"],
        result.call_sid,
        wire.new_sid("AC"),
    )
    try:
        try:
            streamer = await _stream_two_tracks(run, start, frames)
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
