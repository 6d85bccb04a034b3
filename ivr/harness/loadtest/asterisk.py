"""``ivr loadtest --platform asterisk``: many PBX calls at once, and what they cost the service.

The service must run with its ``[asterisk] url`` pointing at ``--ari-listen`` (default
127.0.0.1:8088), where a fake Asterisk (``ivr.harness.fake_asterisk``, unpaced: it sends no RTP
of its own) places N calls, ramped, to ``--to``. The service answers and bridges each with an
external-media channel; every ARI request it makes is seen as it is answered
(``FakeAsterisk.observers``), which gives the set-up time (StasisStart to bridged), the
recording id and the moment the service has finalised a call (it destroys the bridge last). On
an opt-in line the caller presses the accept key ``--press-after`` seconds after the bridge is
up and streams once the service reports the recording; elsewhere (the default line records at
once) it streams as soon as it is bridged.

Media: the shared ticker (``core.StreamRun``) sends every 20 ms the next packet of each call's
external-media RTP stream (``RtpPeer.next_audio_packet``: PCMU, a one-second tone), with
``sendto`` on a duplicate of that channel's socket, the only source the service accepts. The
service's own RTP (prompts) arriving at the fake gives the time from bridged to first prompt.

After ``--duration`` seconds of RTP the caller hangs up and the service's finalisation is
awaited; then ``/healthz`` is polled until ``calls_completed`` has grown by every call, and its
counter deltas give frames stored and lost (``frames_lost`` = sent - stored: 0 on loopback; the
service fills RTP gaps with silence and counts them in ``rtp_lost``). Frames lost with no
``rtp_lost`` are calls' last packets: the hang-up follows them at once, as on Asterisk, and a
lagging service reads its events websocket before the datagrams still in the call's socket.

The same media load then goes to ``bench/reference/bare_rtp_server.py`` (one UDP socket per
call: parse, append, seal once a second, write), and the report gives the ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ivr.harness.audio import tone
from ivr.harness.fake_asterisk import FakeAsterisk, FakeCall, RecordedRequest, RtpPeer
from ivr.harness.loadtest.core import (
    FRAME_S,
    MAX_ERRORS_REPORTED,
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
    parse_ports,
    reference_rows,
    render,
    run_calls,
    run_reference,
    summarise_shared,
)

DEFAULT_ASTERISK_TO = "+15550100004"  # the demo's vital_interests/none line: records at once
DEFAULT_ARI_LISTEN = "127.0.0.1:8088"
ARI_PASSWORD_ENV = "ARI_PASSWORD"
DEMO_ARI_PASSWORD = "demo"
PRESS_AFTER_S = 0.5
BARE_PORT_BASE = 41000  # just above the service's default RTP range (40000-40999)
CONNECT_TIMEOUT_S = 30.0  # the service's ARI client backs off up to 10 s between attempts
SETUP_TIMEOUT_S = 30.0  # StasisStart -> bridged
DECISION_TIMEOUT_S = 30.0  # accept key -> IVR_RECORDING_ID
FINALISE_TIMEOUT_S = 60.0  # caller hang-up -> bridge destroyed
SETTLE_POLL_S = 0.2
HEALTH_TIMEOUT_S = 10.0
_TONE = tone(440.0, -12.0)
POOL: tuple[bytes, ...] = tuple(_TONE.frame(i) for i in range(len(_TONE)))  # one second


class SetupError(Exception):
    """The load test could not start (e.g. the fake cannot listen on ``--ari-listen``)."""


@dataclass(frozen=True)
class AsteriskLoadtestOptions(Options):
    to: str = DEFAULT_ASTERISK_TO
    press_after: float = PRESS_AFTER_S  # seconds after the bridge is up
    ari_listen: str = DEFAULT_ARI_LISTEN
    ari_app: str = "ivr"
    ari_user: str = "ivr"
    ari_password: str | None = None  # None: $ARI_PASSWORD, else "demo"
    bare_ports: str | None = None  # LOW-HIGH for the reference; None: from 41000, N + slack
    connect_timeout: float = CONNECT_TIMEOUT_S

    def resolved_password(self) -> str:
        if self.ari_password is not None:
            return self.ari_password
        return os.environ.get(ARI_PASSWORD_ENV) or DEMO_ARI_PASSWORD

    def listen(self) -> tuple[str, int]:
        host, _, port = self.ari_listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"--ari-listen {self.ari_listen!r} is not HOST:PORT")
        return host, int(port)

    def bare_port_range(self) -> tuple[int, int]:
        if self.bare_ports:
            return parse_ports(self.bare_ports)
        slack = max(16, self.calls // 10)
        return BARE_PORT_BASE, min(65535, BARE_PORT_BASE + self.calls + slack - 1)

    def deadline(self) -> float:
        margin = self.margin if self.margin is not None else 60.0 + 0.1 * self.calls
        press = self.press_after if self.resolved_press() else 0.0
        return self.resolved_ramp() + press + self.duration + margin

    def check(self) -> None:
        super().check()
        if not self.press_after >= 0:
            raise ValueError("--press-after must not be negative")
        self.listen()
        low, high = self.bare_port_range()
        if self.reference and high - low + 1 < self.calls:
            raise ValueError(f"--bare-ports {low}-{high} has fewer ports than --calls")


# -- the RTP stream -----------------------------------------------------------------------------
class _RtpStreamer(TickedStream):
    """One call's real-time RTP stream, fed by the ticker: the next packets of ``peer``'s stream,
    sent with ``sendto`` on ``sock`` (a datagram the socket refuses is dropped, not queued)."""

    def __init__(self, sock: socket.socket, peer: RtpPeer, total: int) -> None:
        super().__init__(total)  # packets; ``sent`` counts those due, sent or dropped
        self.send = sock.sendto
        self.peer = peer
        self.dropped = 0  # packets the socket refused (EAGAIN)

    @property
    def frames_sent(self) -> int:
        return self.sent - self.dropped

    def pump(self, due: int) -> int:
        """Send every packet owed by tick ``due``; returns the packets sent."""
        start, target = self.sent, min(due - self.join_tick, self.total)
        next_packet, dest, dropped = self.peer.next_audio_packet, self.peer.remote, self.dropped
        for n in range(start, target):
            try:
                self.send(next_packet(POOL[n % len(POOL)]), dest)
            except BlockingIOError:
                self.dropped += 1
        self.sent = max(start, target)
        return self.sent - start - (self.dropped - dropped)


async def _stream(
    run: StreamRun, sock: socket.socket, peer: RtpPeer, frames: int, result: _AriCallResult
) -> None:
    """``frames`` packets of ``peer``'s stream through the ticker; CallFailed if they fail."""
    streamer = _RtpStreamer(sock, peer, frames)
    run.join(streamer)
    await streamer.done  # the ticker sets it; bounded by the overall deadline
    result.frames_sent, result.send_errors = streamer.frames_sent, streamer.dropped
    if streamer.error is not None:
        raise CallFailed(streamer.error)


def _rtp_run(expected: int, read_cpu: Any) -> StreamRun:
    return StreamRun(
        expected,
        read_cpu,
        send_errors=(OSError,),
        send_failure="RTP send failed",
        extra_stats=lambda run: {"send_errors": sum(s.dropped for s in run.streamers)},
    )


def _empty_ticker() -> dict[str, Any]:
    return {
        "ticks": 0,
        "late_p50_ms": None,
        "late_p99_ms": None,
        "late_max_ms": None,
        "send_errors": 0,
    }


# -- what the service asks of the fake --------------------------------------------------------
@dataclass
class _Watch:
    """One call as seen through the service's ARI requests."""

    bridged: asyncio.Future[RtpPeer | None]
    recording: asyncio.Future[str | None]
    finalised: asyncio.Future[None]
    answered_at: float | None = None
    bridged_at: float = 0.0
    bridge_id: str | None = None
    finalised_at: float = 0.0
    hung_up: str | None = None  # the service hung the caller up (reason)
    variables: dict[str, str] = field(default_factory=dict)


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


_PATH = re.compile(r"/ari/(channels|bridges)/([^/]+)(?:/([^/]+))?")


class _Tracker:
    """Watches every ARI request the service makes, once answered, and updates the watch of the
    call it concerns (one look-up a request, however many calls are waiting)."""

    def __init__(self, fake: FakeAsterisk) -> None:
        self.fake = fake
        self.loop = asyncio.get_running_loop()
        self.calls: dict[str, _Watch] = {}  # caller channel id -> watch
        self.bridges: dict[str, _Watch] = {}  # bridge id -> watch
        self.requests = 0
        self.rejected = 0
        fake.observers.append(self._answered)

    def watch(self, channel_id: str) -> _Watch:
        loop = self.loop
        watch = _Watch(loop.create_future(), loop.create_future(), loop.create_future())
        self.calls[channel_id] = watch
        return watch

    def forget(self, channel_id: str) -> None:
        watch = self.calls.pop(channel_id, None)
        if watch is not None and watch.bridge_id is not None:
            self.bridges.pop(watch.bridge_id, None)

    def _answered(self, record: RecordedRequest) -> None:
        self.requests += 1
        if record.status is not None and record.status >= 400:
            self.rejected += 1
            return
        m = _PATH.fullmatch(record.path)
        if m is None:
            return
        kind, id_, verb = m.groups()
        request, query, now = (record.method, verb), record.query, time.monotonic()
        watch = self.calls.get(id_) if kind == "channels" else self.bridges.get(id_)
        if request == ("POST", "addChannel"):
            for channel_id in query.get("channel", "").split(","):
                caller, call = self.calls.get(channel_id), self.fake.calls.get(channel_id)
                peer = call.media if call is not None else None
                if caller is not None and peer is not None and not caller.bridged.done():
                    caller.bridged_at, caller.bridge_id = now, id_
                    self.bridges[id_] = caller
                    _settle(caller.bridged, peer)
        elif watch is None:
            return
        elif kind == "bridges" and request == ("DELETE", None):
            del self.bridges[id_]
            watch.finalised_at = now
            _settle(watch.finalised, None)
        elif request == ("DELETE", None):
            watch.hung_up = query.get("reason") or "normal"
            _settle(watch.bridged, None)
            _settle(watch.recording, None)
        elif request == ("POST", "answer"):
            watch.answered_at = now
        elif request == ("POST", "variable"):
            name, value = query.get("variable", ""), query.get("value", "")
            watch.variables[name] = value
            if name == "IVR_RECORDING_ID" and value:
                _settle(watch.recording, value)
            elif name == "IVR_CONSENT_DECISION" and value != "accepted":
                _settle(watch.recording, None)


async def _within(fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await fut
    except TimeoutError:
        raise CallFailed(f"{what} within {timeout:.0f} s") from None


# -- one call against the service -------------------------------------------------------------
@dataclass
class _AriCallResult:
    index: int
    completed: bool = False
    error: str | None = None
    frames_sent: int = 0
    send_errors: int = 0
    setup_ms: float | None = None  # StasisStart -> bridged
    answer_ms: float | None = None  # StasisStart -> answer request
    decision_ms: float | None = None  # key -> IVR_RECORDING_ID
    first_prompt_ms: float | None = None  # bridged -> first prompt packet
    prompt_packets: int = 0
    hangup_to_final_ms: float | None = None  # caller hang-up -> bridge destroyed


@dataclass
class _Context:
    options: AsteriskLoadtestOptions
    fake: FakeAsterisk
    tracker: _Tracker
    run: StreamRun
    frames: int
    press: str
    id_prefix: str
    placed: int = 0
    bridged: int = 0
    finished: int = 0
    failed: int = 0


async def _service_call(ctx: _Context, index: int, start_at: float) -> _AriCallResult:
    loop = asyncio.get_running_loop()
    channel_id = f"{ctx.id_prefix}.{index + 1}"
    result = _AriCallResult(index)
    watch = ctx.tracker.watch(channel_id)
    call: FakeCall | None = None
    joined = False
    sock: socket.socket | None = None
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    placed_at = time.monotonic()
    try:
        call = await ctx.fake.place_call(ctx.options.to, ctx.options.from_, channel_id=channel_id)
        ctx.placed += 1
        peer = await _within(watch.bridged, SETUP_TIMEOUT_S, "the call was not bridged")
        if peer is None:
            raise CallFailed(f"the service hung up during set-up (reason {watch.hung_up})")
        ctx.bridged += 1
        result.setup_ms = (watch.bridged_at - placed_at) * 1000
        if watch.answered_at is not None:
            result.answer_ms = (watch.answered_at - placed_at) * 1000
        if ctx.press:
            await asyncio.sleep(
                max(0.0, watch.bridged_at + ctx.options.press_after - time.monotonic())
            )
            pressed_at = time.monotonic()
            await call.press(ctx.press)
            recording = await _within(
                watch.recording, DECISION_TIMEOUT_S, f"no recording started after key {ctx.press}"
            )
            if recording is None:
                decision = watch.variables.get("IVR_CONSENT_DECISION") or "-"
                raise CallFailed(f"no recording after key {ctx.press} (decision {decision})")
            result.decision_ms = (time.monotonic() - pressed_at) * 1000
        sock = peer.dup_socket()
        joined = True
        await _stream(ctx.run, sock, peer, ctx.frames, result)
        if watch.hung_up is not None:
            raise CallFailed(f"the service hung up during the call (reason {watch.hung_up})")
    except CallFailed as exc:
        result.error = str(exc)
    except (OSError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not joined:
            ctx.run.gave_up()
        if sock is not None:
            sock.close()
    # The caller hangs up whatever happened; the service then finalises (the bridge goes last).
    if call is not None:
        try:
            if not call.channel.destroyed:
                hung_up_at = time.monotonic()
                await call.hangup()
                if watch.bridge_id is not None:
                    await _within(
                        watch.finalised, FINALISE_TIMEOUT_S, "the service did not finalise the call"
                    )
                    result.hangup_to_final_ms = (watch.finalised_at - hung_up_at) * 1000
        except CallFailed as exc:
            result.error = result.error or str(exc)
        except (OSError, RuntimeError) as exc:
            result.error = result.error or f"hang-up: {type(exc).__name__}: {exc}"
        stats = call.rtp_stats()
        result.prompt_packets = stats.packets
        if stats.first_packet_at is not None and watch.bridged_at:
            result.first_prompt_ms = (stats.first_packet_at - watch.bridged_at) * 1000
        ctx.fake.calls.pop(channel_id, None)  # keeps the fake's per-request bookkeeping small
    ctx.tracker.forget(channel_id)
    result.completed = result.error is None and watch.finalised.done()
    if result.error is None and not result.completed:
        result.error = "the call was never finalised"
    ctx.finished += 1
    if not result.completed:
        ctx.failed += 1
    return result


def _failed(index: int, error: str) -> _AriCallResult:
    return _AriCallResult(index, error=error)


# -- the service's /healthz -------------------------------------------------------------------
async def _health(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            async with session.get(f"{base}/healthz") as resp:
                body = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise CallFailed(f"cannot read {base}/healthz: {exc or type(exc).__name__}") from None
    if not isinstance(body, dict) or not isinstance(body.get("asterisk"), dict):
        raise CallFailed(f"{base}/healthz has no 'asterisk' section: is [asterisk] configured?")
    return body


def _counters(health: dict[str, Any]) -> dict[str, int]:
    counters = health["asterisk"].get("counters") or {}
    return {k: int(v) for k, v in counters.items() if isinstance(v, int)}


async def _wait_finalised(
    session: aiohttp.ClientSession, base: str, before: dict[str, int], placed: int, timeout: float
) -> tuple[dict[str, int], bool]:
    """Poll /healthz until calls_completed has grown by every call placed (or, if some never
    reached the service, until it has finished every call it took). Returns the counter deltas
    and whether it settled in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delta: dict[str, int] = {}
    while True:
        with contextlib.suppress(CallFailed):
            health = await _health(session, base)
            after = _counters(health)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted({*after, *before})}
            done, taken = delta.get("calls_completed", 0), delta.get("calls", 0)
            idle = not health["asterisk"].get("calls_in_progress")
            if done >= placed or (idle and done >= taken):
                return delta, True
        if loop.time() >= deadline:
            return delta, False
        await asyncio.sleep(SETTLE_POLL_S)


# -- the run against the service --------------------------------------------------------------
async def _run_service(
    options: AsteriskLoadtestOptions,
    session: aiohttp.ClientSession,
    fake: FakeAsterisk,
    tracker: _Tracker,
    progress: Progress,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    base = options.url.rstrip("/")
    try:
        before = _counters(await _health(session, base))
        try:
            await fake.wait_connected(options.ari_app, timeout=options.connect_timeout)
        except TimeoutError:
            raise CallFailed(
                f"the service did not connect to the fake ARI at {fake.url} (app "
                f"{options.ari_app!r}) within {options.connect_timeout:.0f} s: is its "
                "[asterisk] url set to --ari-listen, with the same user and password?"
            ) from None
    except CallFailed as exc:
        results = [_AriCallResult(i, error=str(exc)) for i in range(options.calls)]
        return _service_summary(options, results, None, tracker, {}, False, loop.time() - t_start)

    async def read_cpu() -> float:
        async with session.get(f"{base}/healthz") as resp:
            return float((await resp.json(content_type=None))["cpu_seconds"])

    run = _rtp_run(options.calls, read_cpu)
    ctx = _Context(
        options=options,
        fake=fake,
        tracker=tracker,
        run=run,
        frames=max(1, round(options.duration / FRAME_S)),
        press=options.resolved_press(),
        id_prefix=str(int(time.time() * 1000)),
    )
    results = await run_calls(
        options,
        run,
        progress,
        "service",
        lambda: (
            f"placed {ctx.placed}/{options.calls}, bridged {ctx.bridged}, finished "
            f"{ctx.finished} (failed {ctx.failed}), {run.progress(options.calls)}"
        ),
        lambda i, at: _service_call(ctx, i, at),
        _failed,
        options.deadline(),
    )
    delta, settled = await _wait_finalised(
        session, base, before, ctx.placed, 30.0 + 0.05 * options.calls
    )
    return _service_summary(options, results, run, tracker, delta, settled, loop.time() - t_start)


def _service_summary(
    options: AsteriskLoadtestOptions,
    results: list[_AriCallResult],
    run: StreamRun | None,
    tracker: _Tracker,
    delta: dict[str, int],
    settled: bool,
    elapsed: float,
) -> dict[str, Any]:
    completed = [r for r in results if r.completed]
    sent = sum(r.frames_sent for r in results)
    stored = delta.get("frames_stored", 0)
    problems = errors(results)
    if run is not None and not settled:
        problems = [
            *problems,
            f"/healthz: calls_completed grew by {delta.get('calls_completed', 0)} of "
            f"{sum(1 for r in results if r.setup_ms is not None)} calls in time",
        ][:MAX_ERRORS_REPORTED]
    return {
        "calls_attempted": options.calls,
        "calls_completed": len(completed),
        "calls_failed": options.calls - len(completed),
        "errors": problems,
        "frames_sent": sent,
        "frames_stored": stored,
        "frames_lost": sent - stored,
        "send_errors": sum(r.send_errors for r in results),
        "server_frames_lost": delta.get("frames_lost", 0),
        "rtp_lost": delta.get("rtp_lost", 0),
        "counters": delta,
        "finalised": settled,
        "ari_setup_ms": dist([r.setup_ms for r in results if r.setup_ms is not None]),
        "ari_answer_ms": dist([r.answer_ms for r in results if r.answer_ms is not None]),
        "decision_ms": dist([r.decision_ms for r in results if r.decision_ms is not None]),
        "ari_requests": tracker.requests,
        "ari_rejected": tracker.rejected,
        "first_prompt_ms": dist(
            [r.first_prompt_ms for r in results if r.first_prompt_ms is not None]
        ),
        "prompt_packets": sum(r.prompt_packets for r in results),
        "hangup_to_final_ms": dist(
            [r.hangup_to_final_ms for r in results if r.hangup_to_final_ms is not None]
        ),
        "cost": run.cost(options.duration) if run is not None else {"window": None},
        "ticker": run.ticker_stats() if run is not None else _empty_ticker(),
        "elapsed_s": round(elapsed, 1),
    }


# -- the reference run -------------------------------------------------------------------------
async def _bare_call(
    run: StreamRun, port: int, index: int, start_at: float, frames: int, rng: random.Random
) -> _AriCallResult:
    loop = asyncio.get_running_loop()
    result = _AriCallResult(index)
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    joined = False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            # Numbered like a fake channel's stream, sent from a plain socket.
            stream = RtpPeer(
                f"bare-{index}", ("127.0.0.1", port), "ulaw", rng=rng, on_change=lambda: None
            )
            joined = True
            await _stream(run, sock, stream, frames, result)
            result.completed = True
    except CallFailed as exc:
        result.error = str(exc)
    except OSError as exc:
        result.error = f"bare RTP stream: {type(exc).__name__}: {exc}"
    finally:
        if not joined:
            run.gave_up()
    return result


async def _run_reference(
    options: AsteriskLoadtestOptions, session: aiohttp.ClientSession, progress: Progress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    low, high = options.bare_port_range()
    bare_server = ReferenceServer(
        "bare_rtp_server.py", ["--ports", f"{low}-{high}"], "bare RTP server"
    )
    async with bare_server as bare:
        try:
            ports = [int(p) for p in (await bare.get_json(session, "/ports"))["ports"]]
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            raise CallFailed(f"bare RTP server: cannot list its ports: {exc}") from None
        if len(ports) < options.calls:
            raise CallFailed(
                f"bare RTP server bound only {len(ports)} ports of {low}-{high} "
                f"({options.calls} needed; see --bare-ports)"
            )

        run = _rtp_run(options.calls, lambda: bare.read_cpu(session))
        frames = max(1, round(options.duration / FRAME_S))
        rng = random.Random()
        t_start = loop.time()
        results = await run_calls(
            options,
            run,
            progress,
            "bare",
            lambda: run.progress(options.calls),
            lambda i, at: _bare_call(run, ports[i], i, at, frames, rng),
            _failed,
            options.deadline(),
        )
        sent = sum(r.frames_sent for r in results)
        received = await _bare_received(bare, session, sent)
    completed = [r for r in results if r.completed]
    return {
        "streams": options.calls,
        "streams_completed": len(completed),
        "streams_failed": options.calls - len(completed),
        "errors": errors(results),
        "ports": f"{low}-{high}",
        "frames_sent": sent,
        "frames_received": received,
        "frames_lost": sent - received if received is not None else None,
        "cost": run.cost(options.duration),
        "ticker": run.ticker_stats(),
        "elapsed_s": round(loop.time() - t_start, 1),
    }


async def _bare_received(
    bare: ReferenceServer, session: aiohttp.ClientSession, expected: int
) -> int | None:
    """The bare server's datagram count, once the last ones have landed (bounded)."""
    received: int | None = None
    for _ in range(20):
        try:
            received = int((await bare.get_json(session, "/stats"))["frames"])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            return received
        if received >= expected:
            break
        await asyncio.sleep(0.1)
    return received


# -- the whole test ----------------------------------------------------------------------------
async def run_asterisk_loadtest(options: AsteriskLoadtestOptions) -> dict[str, Any]:
    """Run the load test (and the bare reference unless disabled); the report as a dict.

    Raises ValueError for bad options and SetupError if the fake Asterisk cannot listen."""
    options.check()
    host, port = options.listen()
    progress = Progress(options)
    report: dict[str, Any] = {
        "platform": "asterisk",
        "url": options.url,
        "ari_listen": options.ari_listen,
        "to": options.to,
        "press": options.resolved_press() or None,
        "calls": options.calls,
        "duration_s": options.duration,
        "ramp_s": options.resolved_ramp(),
    }
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        fake = FakeAsterisk(
            app=options.ari_app,
            username=options.ari_user,
            password=options.resolved_password(),
            host=host,
            port=port,
            pace=False,
            seed=random.getrandbits(32),
        )
        tracker = _Tracker(fake)
        try:
            await fake.start()
        except OSError as exc:
            await fake.stop()
            raise SetupError(
                f"the fake Asterisk cannot listen on {options.ari_listen}: {exc}"
            ) from None
        try:
            report["service"] = await _run_service(options, session, fake, tracker, progress)
        finally:
            await fake.stop()
        await run_reference(
            report,
            options.reference,
            "no call streamed to the service" if report["service"]["frames_sent"] == 0 else None,
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
        "rtp_lost",
    )
    service, ref = summarise_shared(report, keys)
    report["ari_setup_p50_ms"] = service["ari_setup_ms"]["p50"]
    report["ari_setup_p99_ms"] = service["ari_setup_ms"]["p99"]
    report["ticker_late_p50_ms"] = service["ticker"]["late_p50_ms"]
    # A service that cannot keep up uses a whole core whatever the load, and its per-call
    # queues grow: the hang-up then waits behind queued RTP before the call is finalised.
    utilisation = service["cost"].get("server_cpu_utilisation") or 0.0
    lag = service["hangup_to_final_ms"]["p99"] or 0.0
    overflow = service["counters"].get("call_queue_overflow", 0)
    report["service_saturated"] = (
        utilisation >= SATURATED_UTILISATION or lag >= SATURATED_LAG_MS or overflow > 0
    )
    reference_ok = ref is None or ref["streams_failed"] == 0
    report["ok"] = (
        service["calls_failed"] == 0
        and service["finalised"]
        and service["frames_sent"] > 0
        and service["frames_lost"] == 0
        and service["server_frames_lost"] == 0
        and service["rtp_lost"] == 0
        and report["reference_error"] is None
        and reference_ok
    )


# -- output -----------------------------------------------------------------------------------
def format_asterisk_report(report: dict[str, Any]) -> str:
    s = report["service"]
    setup, answer, prompt = s["ari_setup_ms"], s["ari_answer_ms"], s["first_prompt_ms"]
    press = f", press {report['press']}" if report["press"] else ""
    rows: list[tuple[str, str]] = [
        (
            "calls",
            f"{s['calls_completed']}/{s['calls_attempted']} completed, {s['calls_failed']} failed"
            f"  ({report['duration_s']:g} s of RTP each, ramp {report['ramp_s']:g} s,"
            f" to {report['to']}{press}; fake ARI at {report['ari_listen']})",
        ),
        (
            "frames",
            f"sent {fmt(s['frames_sent'])}, stored {fmt(s['frames_stored'])}, lost "
            f"{fmt(s['frames_lost'])}; service: frames lost {fmt(s['server_frames_lost'])}, "
            f"rtp lost {fmt(s['rtp_lost'])}"
            + (f"; send errors {fmt(s['send_errors'])}" if s["send_errors"] else ""),
        ),
        (
            "ari set-up ms",
            f"p50 {fmt(setup['p50'])}  p99 {fmt(setup['p99'])}  max {fmt(setup['max'])}"
            f"  (StasisStart -> bridged; answer p50 {fmt(answer['p50'])} p99 "
            f"{fmt(answer['p99'])}); {fmt(s['ari_requests'])} requests, "
            f"{fmt(s['ari_rejected'])} rejected",
        ),
    ]
    if s["decision_ms"]["count"]:
        d = s["decision_ms"]
        rows.append(("key->recording ms", f"p50 {fmt(d['p50'])}  p99 {fmt(d['p99'])}"))
    rows.append(
        (
            "first prompt ms",
            f"p50 {fmt(prompt['p50'])}  p99 {fmt(prompt['p99'])}  (bridged -> first RTP "
            f"packet, n={prompt['count']})"
            if prompt["count"]
            else "- (no prompt played on this line)",
        )
    )
    lag = s["hangup_to_final_ms"]
    rows.append(("hangup->final ms", f"p50 {fmt(lag['p50'])}  p99 {fmt(lag['p99'])}"))

    rows += reference_rows(report)
    if report.get("service_saturated"):
        rows.append(
            (
                "warning",
                "the service could not keep up (saturated CPU, queue overflow or hangup->final "
                f"p99 {fmt(lag['p99'])} ms): its CPU per call-minute understates its cost",
            )
        )
    return render(rows, report)
