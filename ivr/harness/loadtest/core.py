"""What both platforms' load tests share: everything but placing a call and streaming its media.

A platform is a ``Driver``: it places one call against the service and streams its media
(``call``), and names the metrics of its own. The rest is here: the options, the ramp, the
ticker, CPU cost, the progress line, the report and its verdict.

The ticker (``StreamRun``): every 20 ms it asks each streaming call for the frames it owes
(``TickedStream.pump``), one write per call; a late tick is caught up (each call is owed ``ticks
since it joined`` frames), so lateness never accumulates, and no task runs per call per tick.

Cost: the server's CPU seconds are read when every call is streaming and again when the first
call stops, and divided by the call-minutes streamed in between (the whole streaming span when
that window is too short). ``Driver.load`` runs the generator against anything that reports its
CPU seconds: ``bench/calls.py`` (``make bench-calls``) loads a bare reference server with it, in
the same way, for the ratio of the service's cost to the bare minimum.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from ivr.harness.twilio_wire import DEFAULT_FROM, DEFAULT_URL, OPT_IN_LINES
from media.dtmf import DIGITS

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
PRESS_AFTER_S = 0.5  # opt-in lines: the accept key this long into the prompt (or the bridge)
CPU_READ_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 30.0  # any one request to the service (a webhook, /healthz)
# How long the generator keeps an idle connection for its next request: less than the service
# keeps one open (ivr serve: [limits] header_timeout_seconds, 10 s by default), or a request
# may go out on a connection the service is closing that instant and be reset (the first calls'
# status callbacks were, at 1,000 calls, with aiohttp's 15 s).
KEEPALIVE_S = 4.0
MAX_ERRORS_REPORTED = 5
SATURATED_UTILISATION = 0.95  # server CPU (fraction of one core) that means "flat out"
SATURATED_LAG_MS = 1000.0  # end-of-call lag p99 this long: the service fell behind real time

_O = TypeVar("_O", bound="Options")
_S = TypeVar("_S", bound="TickedStream")


class CallFailed(Exception):
    """One call did not go as the platform's would; the message says where."""


class SetupError(Exception):
    """The load test could not start (e.g. the fake cannot listen on ``--ari-listen``)."""


@dataclass(frozen=True)
class Options:
    """The options both platforms take."""

    url: str = DEFAULT_URL  # the service
    calls: int = 50
    duration: float = 20.0  # seconds of media per call, in real time
    ramp: float | None = None  # seconds over which call starts are spread; None: min(10, N/50)
    to: str = ""
    from_: str = DEFAULT_FROM
    press: str | None = None  # key pressed during the prompt; None: "1" on opt-in lines
    progress_interval: float = 3.0  # seconds between progress lines; 0: none
    progress_stream: Any = None  # default sys.stderr
    margin: float | None = None  # extra seconds before the overall deadline; None: automatic

    def resolved_ramp(self) -> float:
        return self.ramp if self.ramp is not None else min(10.0, self.calls / 50)

    def resolved_press(self) -> str:
        if self.press is not None:
            return self.press
        return "1" if self.to in OPT_IN_LINES else ""

    def frames(self) -> int:
        """Frames (packets) each call streams."""
        return max(1, round(self.duration / FRAME_S))

    def deadline(self) -> float:
        """Seconds a run may take at the most."""
        raise NotImplementedError

    def check(self) -> None:
        """ValueError for what no load test can run with."""
        if self.calls < 1:
            raise ValueError("--calls must be at least 1")
        if not self.duration >= FRAME_S:
            raise ValueError("--duration must be at least 0.02 s")
        if self.ramp is not None and self.ramp < 0:
            raise ValueError("--ramp must not be negative")
        press = self.resolved_press()
        if press and (len(press) != 1 or press not in DIGITS):
            raise ValueError(f"--press {press!r} is not one DTMF digit")
        base = urlsplit(self.url)
        if base.scheme != "http" or not base.hostname:
            raise ValueError(f"--url must be an http:// URL, not {self.url!r}")


# -- numbers ----------------------------------------------------------------------------------
def pct(sorted_values: Sequence[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rounded(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def dist(values: Sequence[float]) -> dict[str, Any]:
    s = sorted(values)
    return {
        "count": len(s),
        "p50": rounded(pct(s, 50), 1),
        "p99": rounded(pct(s, 99), 1),
        "max": rounded(s[-1], 1) if s else None,
    }


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tcp_segments(
    snmp: str = "/proc/net/snmp", netstat: str = "/proc/net/netstat"
) -> tuple[int, int] | None:
    """This host's TCP segments sent so far, and how many of them carried data (Linux's
    ``Tcp: OutSegs`` and ``TcpExt: TCPOrigDataSent``); None where they cannot be read.

    The rest are bare ACKs. Against a server on this host, in a window where only the generator
    sends data (every call streaming, as in the steady window), they are the server's ACKs of
    the media: where the kernel sends such an ACK decides who pays for it. One sent at a
    segment's arrival runs in the sender's system call, which is the generator's on loopback;
    one left for the server's read runs in the server's, and on loopback it carries the cost
    of its delivery to the generator's socket with it (README, Performance)."""

    def field(path: str, table: str, name: str) -> int:
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith(table)]
        for names, values in zip(rows[::2], rows[1::2], strict=False):
            if name in names:
                return int(values[names.index(name)])
        raise KeyError(name)

    try:
        return field(snmp, "Tcp:", "OutSegs"), field(netstat, "TcpExt:", "TCPOrigDataSent")
    except (OSError, KeyError, ValueError, IndexError):
        return None


# -- the ticker -------------------------------------------------------------------------------
class TickedStream:
    """One call's real-time stream, fed by the ticker. The platform's kind says how it sends
    (``pump``), what a failed send raises, and what its sender knows (``stats``)."""

    send_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)
    send_failure: ClassVar[str] = "send failed"
    over_tcp: ClassVar[bool] = True  # the media goes over TCP: its ACKs are counted (tcp_segments)

    def __init__(self, total: int) -> None:
        self.total = total  # frames in the stream
        self.sent = 0  # frames due so far
        self.error: str | None = None
        self.join_tick = 0
        self.join_time = 0.0
        self.end_time: float | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def frames_sent(self) -> int:
        """The frames this stream counts as sent."""
        return self.sent

    def pump(self, due: int) -> int:
        """Send every frame owed by tick ``due``; returns the messages sent."""
        raise NotImplementedError

    @classmethod
    def stats(cls, streams: list[Any]) -> dict[str, Any]:
        """The sender's own numbers for the ticker's report (socket backlog, refused sends)."""
        return {}

    def fail(self, reason: str) -> None:
        if self.error is None and self.sent < self.total:
            self.error = reason
        if not self.done.done():
            self.done.set_result(None)


class StreamRun:
    """The streaming phase of one run: the ticker, who is streaming, and the CPU read at its
    four moments (first_join, all_joined, first_done, last_done)."""

    def __init__(
        self, expected: int, read_cpu: Callable[[], Awaitable[float]], kind: type[TickedStream]
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.read_cpu = read_cpu
        self.kind = kind  # the platform's streams
        self.pending_join = expected  # calls that may still join
        self.active: list[Any] = []
        self.streamers: list[Any] = []
        self.frames_sent = 0
        self.lateness: list[float] = []
        self.t0: float | None = None
        self.samples: dict[str, tuple[float, float, float]] = {}  # moment -> time, cpu, ours
        self.tcp: dict[str, tuple[int, int] | None] = {}  # moment -> tcp_segments()
        self.cpu_before: float | None = None  # before the first call (``load``)
        self._samplers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # -- membership ------------------------------------------------------------------------
    def join(self, s: TickedStream) -> None:
        if self.t0 is None:
            self.t0 = self.loop.time()
            self._task = asyncio.ensure_future(self._tick())
        s.join_tick = int((self.loop.time() - self.t0) / FRAME_S)
        s.join_time = self.loop.time()
        self.active.append(s)
        self.streamers.append(s)
        self._mark("first_join")
        self.gave_up()  # one fewer to wait for

    def gave_up(self) -> None:
        """One call fewer that may still join (this one failed before its media started)."""
        self.pending_join -= 1
        if self.pending_join <= 0:
            if self.streamers:
                self._mark("all_joined")
            if not self.active:
                self._mark("last_done")
        self._wake.set()

    def _finished(self, s: TickedStream) -> None:
        s.end_time = self.loop.time()
        if not s.done.done():
            s.done.set_result(None)
        if s.error is None:
            self._mark("first_done")

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
            keep: list[Any] = []
            for s in self.active:
                if s.error is None:
                    try:
                        self.frames_sent += s.pump(due)
                    except s.send_errors as exc:
                        s.fail(f"{s.send_failure}: {exc}")
                if s.error is not None or s.sent >= s.total:
                    self._finished(s)
                else:
                    keep.append(s)
            self.active = keep
            if keep:
                continue
            if self.pending_join <= 0:
                self._mark("last_done")
            # Nobody to feed: sleep until a stream joins (or none can any more).
            while not (self.active or self._stopped or self.pending_join <= 0):
                self._wake.clear()
                await self._wake.wait()
            if not self.active:
                return
            k = int((loop.time() - t0) / FRAME_S)

    def _mark(self, moment: str) -> None:
        """Read the server's CPU seconds (and ours) at ``moment``, the first time it comes."""
        if moment in self._samplers:
            return

        async def sample() -> None:
            t1, own1 = self.loop.time(), own_cpu()
            self.tcp[moment] = tcp_segments() if self.kind.over_tcp else None
            cpu = await self.read_cpu_now()
            if cpu is None:
                return
            self.samples[moment] = ((t1 + self.loop.time()) / 2, cpu, (own1 + own_cpu()) / 2)

        self._samplers[moment] = asyncio.ensure_future(sample())

    async def stop(self) -> None:
        """Stop the ticker; let CPU reads already under way finish (bounded)."""
        self._stopped = True
        self._wake.set()
        for s in self.active:
            s.fail("load test stopped")
        if self._samplers:
            await asyncio.wait(self._samplers.values(), timeout=CPU_READ_TIMEOUT_S + 1)
        for task in [self._task, *self._samplers.values()]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- results ---------------------------------------------------------------------------
    def cost(self, duration: float) -> dict[str, Any]:
        """CPU over the steady window (all streaming), else over the whole streaming span."""
        min_window = min(2.0, max(0.5, 0.25 * duration))
        moments = "all_joined", "first_done"
        a, b = (self.samples.get(m) for m in moments)
        window = "steady"
        if a is None or b is None or b[0] - a[0] < min_window:
            moments = "first_join", "last_done"
            a, b = (self.samples.get(m) for m in moments)
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
            # On the event loop's clock: loads run side by side in one process share it.
            "window_from": round(a[0], 3),
            "window_to": round(b[0], 3),
            "call_minutes": round(call_s / 60, 3),
            "concurrent_calls": round(call_s / wall, 1),
            "server_cpu_s": round(cpu, 3),
            "server_cpu_utilisation": round(cpu / wall, 3),
            "server_cpu_per_call_minute": round(per_minute, 5) if per_minute else None,
            "sender_cpu_s": round(sender, 3),
            "sender_cpu_utilisation": round(sender / wall, 3),
            **self._acks(*(self.tcp.get(m) for m in moments)),
        }

    @staticmethod
    def _acks(a: tuple[int, int] | None, b: tuple[int, int] | None) -> dict[str, Any]:
        """This host's TCP segments over the window (``tcp_segments``): data, and bare ACKs per
        data segment."""
        if a is None or b is None or b[1] <= a[1]:
            return {}
        data = b[1] - a[1]
        bare = (b[0] - a[0]) - data
        return {"tcp_data_segments": data, "tcp_acks_per_data_segment": round(bare / data, 3)}

    def whole_cost(self, cpu_after: float | None) -> dict[str, Any]:
        """CPU from before the first call to after the last one ended (webhooks, consent,
        finalisation and all) per call-minute of media streamed: what a whole call costs."""
        call_s = sum(
            max(0.0, s.end_time - s.join_time) for s in self.streamers if s.end_time is not None
        )
        if self.cpu_before is None or cpu_after is None or call_s <= 0:
            return {"server_cpu_s": None, "server_cpu_per_call_minute": None}
        cpu = cpu_after - self.cpu_before
        return {
            "server_cpu_s": round(cpu, 3),
            "call_minutes": round(call_s / 60, 3),
            "server_cpu_per_call_minute": round(cpu / (call_s / 60), 5),
        }

    async def read_cpu_now(self) -> float | None:
        """The server's CPU seconds now, or None if it cannot be read."""
        try:
            async with asyncio.timeout(CPU_READ_TIMEOUT_S):
                return await self.read_cpu()
        except (CallFailed, TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError):
            return None

    def ticker_stats(self) -> dict[str, Any]:
        late = sorted(x * 1000 for x in self.lateness)
        return {
            "ticks": len(late),
            "late_p50_ms": rounded(pct(late, 50)),
            "late_p99_ms": rounded(pct(late, 99)),
            "late_max_ms": rounded(late[-1]) if late else None,
            **self.kind.stats(self.streamers),
        }

    def progress(self, calls: int) -> str:
        late = self.ticker_stats()["late_p99_ms"]
        return (
            f"streaming {len(self.active)}/{calls}, frames sent {self.frames_sent}, "
            f"tick late p99 {fmt(late)} ms"
        )


# -- one call's outcome -----------------------------------------------------------------------
class CallResult:
    """One call's (or stream's) outcome, as its driver fills it in.

    The call either streams through the run's ticker (``stream``) or tells the run that it never
    will (``give_up``): exactly one of the two reaches the run, however the call ends.
    """

    def __init__(self, index: int, run: StreamRun | None = None, error: str | None = None) -> None:
        self.index = index
        self.error = error  # None: it completed
        self.frames_sent = 0
        self.ms: dict[str, float] = {}  # timings, by their key in the report
        self.counts: Counter[str] = Counter()  # counters, by their key in the report
        self._run = run  # the run still owed a join or a give-up

    @property
    def completed(self) -> bool:
        return self.error is None

    async def stream(self, streamer: _S) -> _S:
        """Stream through the ticker until done (bounded by the overall deadline)."""
        run, self._run = self._run, None
        assert run is not None, "a call streams once"
        run.join(streamer)
        await streamer.done
        self.frames_sent = streamer.frames_sent
        return streamer

    def give_up(self) -> None:
        """The call will never stream (nothing once it has)."""
        if self._run is not None:
            self._run.gave_up()
            self._run = None


def outcome(
    results: Sequence[CallResult], run: StreamRun, duration: float, timed: Sequence[str]
) -> dict[str, Any]:
    """What every run reports of its calls: how many completed, the first errors, the frames
    sent, the timings named by ``timed``, the CPU cost and the ticker's numbers."""
    completed = sum(r.completed for r in results)
    return {
        "calls_attempted": len(results),
        "calls_completed": completed,
        "calls_failed": len(results) - completed,
        "errors": [f"call {r.index}: {r.error}" for r in results if r.error][:MAX_ERRORS_REPORTED],
        "frames_sent": sum(r.frames_sent for r in results),
        **{key: dist([r.ms[key] for r in results if key in r.ms]) for key in timed},
        "cost": run.cost(duration),
        "ticker": run.ticker_stats(),
    }


# -- a platform's driver ----------------------------------------------------------------------
class Driver(ABC, Generic[_O]):
    """One platform's side of the load test; ``run`` does the rest.

    A driver places one call against the service and streams its media (``call``), and adds
    what it measures beyond the shared part: timings in ``CallResult.ms`` named by ``timings``,
    its fields of the service report (``service_fields``), the progress line's start
    (``progress_head``), the rows of its own (``rows``) and its verdict terms as data (``ok_if``,
    ``ok_if_zero``, ``overload``). ``prepare`` runs before the first call (CallFailed fails them
    all), ``settle`` after the last (problems to report); ``async with`` the driver spans the
    service run.
    """

    platform: ClassVar[str]  # its --platform
    options_type: ClassVar[type[Options]]
    stream: ClassVar[type[TickedStream]]  # the platform's streams
    media: ClassVar[str]  # what each call streams, in the report's "calls" row
    timings: ClassVar[tuple[str, ...]]  # per-call timings in the service report
    headline: ClassVar[str]  # the timing whose p50 and p99 go at the top of the report
    top: ClassVar[tuple[str, ...]] = ()  # more service fields copied to the top
    lag: ClassVar[tuple[str, str]]  # the end-of-call lag: its timing and its row's label
    saturation: ClassVar[str] = "saturated CPU"  # what shows saturation besides the lag
    note: ClassVar[str] = ""  # the end of the "calls" row, formatted with the report
    ok_if: ClassVar[tuple[str, ...]] = ()  # service fields that must hold for "OK"
    ok_if_zero: ClassVar[tuple[str, ...]] = ()  # and those that must be 0, as calls_failed
    overload: ClassVar[str | None] = None  # a service counter whose growth shows saturation
    shown: ClassVar[tuple[str, ...]] = ()  # options copied into the report, under their names

    def __init__(self, options: _O, session: aiohttp.ClientSession) -> None:
        self.options = options
        self.session = session
        self.finished = 0  # calls done, for the progress line
        self.failed = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def prepare(self) -> None:
        pass

    @abstractmethod
    async def call(self, result: CallResult) -> None: ...

    @abstractmethod
    def progress_head(self) -> str: ...

    async def settle(self, results: list[CallResult]) -> list[str]:
        return []

    @abstractmethod
    def service_fields(self, results: list[CallResult]) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def rows(cls, service: dict[str, Any]) -> list[tuple[str, str]]: ...

    # -- the run -----------------------------------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        """The service's ``/healthz``; CallFailed if it cannot be read."""
        url = f"{self.options.url.rstrip('/')}/healthz"
        try:
            async with asyncio.timeout(CPU_READ_TIMEOUT_S), self.session.get(url) as resp:
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise CallFailed(f"cannot read {url}: {exc or type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise CallFailed(f"{url} did not answer a JSON object")
        return body

    async def read_cpu(self) -> float:
        """The service's CPU seconds: of all its worker processes where /healthz tells (``ivr
        serve --workers N``, whichever worker answers), else of the process that answered."""
        health = await self.healthz()
        every = (health.get("worker") or {}).get("all_workers_cpu_seconds")
        return float(every if every is not None else health["cpu_seconds"])

    async def run_service(self) -> dict[str, Any]:
        o, t_start = self.options, time.monotonic()
        run = StreamRun(o.calls, self.read_cpu, self.stream)
        try:
            await self.prepare()
        except CallFailed as exc:
            await run.stop()
            results = [CallResult(i, error=str(exc)) for i in range(o.calls)]
            report = outcome(results, run, o.duration, self.timings)
        else:
            results, report = await self.load(run, self.call, "service", self.timings)
            report["errors"] = (report["errors"] + await self.settle(results))[:MAX_ERRORS_REPORTED]
            # Every call finalised: the whole calls' cost, finalisation included.
            report["whole_call_cost"] = run.whole_cost(await run.read_cpu_now())
        report["elapsed_s"] = round(time.monotonic() - t_start, 1)  # with ``prepare``
        return {**report, **self.service_fields(results)}

    async def load(
        self,
        run: StreamRun,
        call: Callable[[CallResult], Awaitable[None]],
        label: str,
        timed: Sequence[str],
    ) -> tuple[list[CallResult], dict[str, Any]]:
        """``call`` for every call on the ramp's schedule, streaming through ``run``; each one's
        result, a failed one for those not done by the overall deadline, and their ``outcome``
        (with the timings ``timed`` and the seconds it took). A progress line tagged ``label``
        every ``progress_interval``; the ticker and the progress line are stopped whatever
        happens."""
        loop, o = asyncio.get_running_loop(), self.options
        n, ramp, deadline = o.calls, o.resolved_ramp(), o.deadline()
        t_start = loop.time()
        t0 = t_start + 0.05

        async def one(i: int) -> CallResult:
            result = CallResult(i, run)
            await asyncio.sleep(max(0.0, t0 + (ramp * i / n if n > 1 else 0.0) - loop.time()))
            try:
                await call(result)
            except CallFailed as exc:
                result.error = str(exc)
            finally:
                result.give_up()
            self.finished += 1
            self.failed += not result.completed
            return result

        def line() -> str:
            head = f"{self.progress_head()}, " if call == self.call else ""
            return f"{head}finished {self.finished} (failed {self.failed}), {run.progress(n)}"

        run.cpu_before = await run.read_cpu_now()
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        progress = asyncio.ensure_future(self._progress(label, line))
        try:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            await run.stop()
        results = []
        for i, task in enumerate(tasks):
            if task.done() and not task.cancelled() and task.exception() is None:
                results.append(task.result())
            else:
                exc = None if task.cancelled() else task.exception()
                error = (
                    f"overall deadline ({deadline:.0f} s) reached"
                    if task in pending or exc is None
                    else f"{type(exc).__name__}: {exc}"
                )
                results.append(CallResult(i, error=error))
        report = outcome(results, run, o.duration, timed)
        report["whole_call_cost"] = run.whole_cost(await run.read_cpu_now())
        return results, {**report, "elapsed_s": round(loop.time() - t_start, 1)}

    async def _progress(self, label: str, line: Callable[[], str]) -> None:
        """A progress line on stderr every ``progress_interval`` seconds (0: none)."""
        interval, out = self.options.progress_interval, self.options.progress_stream or sys.stderr
        t0 = time.monotonic()
        while interval > 0:
            await asyncio.sleep(interval)
            print(f"[{label} {time.monotonic() - t0:6.1f}s] {line()}", file=out)
            with contextlib.suppress(AttributeError, OSError):
                out.flush()

    # -- the report --------------------------------------------------------------------------
    @classmethod
    def summarise(cls, report: dict[str, Any]) -> None:
        """The top of the report: counts, latencies, CPU, and the verdict."""
        service = report["service"]
        shared = ("calls_attempted", "calls_completed", "calls_failed", "frames_sent")
        for key in (*shared, "frames_stored", "frames_lost", *cls.top):
            report[key] = service[key]
        report["errors"] = service["errors"]
        headline = cls.headline.removesuffix("_ms")
        for name, key in (("first_prompt", "first_prompt_ms"), (headline, cls.headline)):
            report[f"{name}_p50_ms"] = service[key]["p50"]
            report[f"{name}_p99_ms"] = service[key]["p99"]
        report["sender_cpu_utilisation"] = service["cost"].get("sender_cpu_utilisation")
        report["ticker_late_p50_ms"] = service["ticker"]["late_p50_ms"]
        report["ticker_late_p99_ms"] = service["ticker"]["late_p99_ms"]
        report["server_cpu_per_call_minute"] = service["cost"].get("server_cpu_per_call_minute")
        # A service that cannot keep up uses a whole core whatever the load: its CPU per
        # call-minute then understates the real cost. The end-of-call lag shows how far behind
        # real time it ended up.
        utilisation = service["cost"].get("server_cpu_utilisation") or 0.0
        lag = service[cls.lag[0]]["p99"] or 0.0
        grown = service["counters"].get(cls.overload, 0) if cls.overload else 0
        report["service_saturated"] = (
            utilisation >= SATURATED_UTILISATION or lag >= SATURATED_LAG_MS or grown > 0
        )
        zero = ("calls_failed", "frames_lost", *cls.ok_if_zero)
        report["ok"] = all(service[k] for k in cls.ok_if) and not any(service[k] for k in zero)

    @classmethod
    def format(cls, report: dict[str, Any]) -> str:
        """The report as aligned text rows, the errors and the verdict."""
        s = report["service"]
        press = f", press {report['press']}" if report["press"] else ""
        lag_key, lag_label = cls.lag
        rows = [
            (
                "calls",
                f"{s['calls_completed']}/{s['calls_attempted']} completed, "
                f"{s['calls_failed']} failed  ({report['duration_s']:g} s {cls.media} each, ramp "
                f"{report['ramp_s']:g} s, to {report['to']}{press}{cls.note.format(**report)})",
            ),
            *cls.rows(s),
            (f"{lag_label} ms", p50_p99(s[lag_key])),
            *cost_rows("service cpu", s["cost"], s["ticker"]),
        ]
        if report.get("service_saturated"):
            rows.append(
                (
                    "warning",
                    f"the service could not keep up ({cls.saturation} or {lag_label} p99 "
                    f"{fmt(s[lag_key]['p99'])} ms): its CPU per call-minute understates its cost",
                )
            )
        rows += [("errors" if i == 0 else "", e) for i, e in enumerate(report["errors"])]
        rows.append(("result", "OK" if report["ok"] else "FAILED"))
        return aligned(rows)


async def run(driver: type[Driver[_O]], options: _O) -> dict[str, Any]:
    """Run the load test; the report as a dict."""
    options.check()
    report: dict[str, Any] = {
        "platform": driver.platform,
        "url": options.url,
        "to": options.to,
        "press": options.resolved_press() or None,
        "calls": options.calls,
        "duration_s": options.duration,
        "ramp_s": options.resolved_ramp(),
        **{name: getattr(options, name) for name in driver.shown},
    }
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        platform = driver(options, session)
        async with platform:
            report["service"] = await platform.run_service()
    driver.summarise(report)
    return report


# -- text -------------------------------------------------------------------------------------
def fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if abs(x) < 1 else f"{x:,.1f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x}{unit}"


def p50_p99(d: dict[str, Any]) -> str:
    return f"p50 {fmt(d['p50'])}  p99 {fmt(d['p99'])}"


def aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cost_rows(label: str, cost: dict[str, Any], ticker: dict[str, Any]) -> list[tuple[str, str]]:
    """The CPU lines of one run (the service's, or a reference's)."""
    if not cost.get("window"):
        return [(label, "no CPU window measured")]
    backlog = ticker.get("max_send_backlog_bytes")
    return [
        (
            label,
            f"{fmt(cost['server_cpu_per_call_minute'])} CPU s per call-minute "
            f"({fmt(cost['server_cpu_utilisation'] * 100)}% of a core, "
            f"{cost['concurrent_calls']:g} calls over {cost['window_s']:g} s, {cost['window']})",
        ),
        (
            "  sender",
            f"{fmt(cost['sender_cpu_utilisation'] * 100)}% of a core; ticker late p50 "
            f"{fmt(ticker['late_p50_ms'])} p99 {fmt(ticker['late_p99_ms'])} max "
            f"{fmt(ticker['late_max_ms'])} ms"
            + (f"; max send backlog {fmt(backlog)} B" if backlog is not None else ""),
        ),
    ] + (
        [
            (
                "  tcp on this host",
                f"{cost['tcp_acks_per_data_segment']:.2f} bare ACKs per data segment "
                f"({fmt(cost['tcp_data_segments'])} data segments)",
            )
        ]
        if "tcp_acks_per_data_segment" in cost
        else []
    )
