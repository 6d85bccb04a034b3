"""What a call costs the service, against a bare reference server under the same load.

Each run loads the service with ``ivr loadtest``'s generator (``ivr.harness.loadtest``), then a
bare reference server from ``bench/reference/`` with the same generator, pacing and streams:
``bare_ws_server.py`` for Twilio (receive, decode, seal, write) and ``bare_rtp_server.py`` for
Asterisk (one UDP socket per call: parse, append, seal, write). The service is an ``ivr serve``
started here with a fresh data directory (for Asterisk with ``examples/asterisk-demo.toml``,
its ``[asterisk] url`` at ``--ari-listen``), or the one at ``--url``.

With ``--side-by-side`` the reference is loaded at the same time as the service, from the same
process, so that both see the machine at the same speed (it drifts between runs a minute apart:
README "Performance"), though they then contend for it.

For each of ``--repeats`` runs it prints the CPU lines of both and their ratio (service / bare,
CPU seconds per call-minute over the window when every call streams, or the whole streaming
phase when that is too short), the latency percentiles, the growth of resident memory per
call while the run lasted (for the processes started here), and the service's garbage
collections during the run (from its /healthz); then min/median/max over the runs.
``--json`` prints all of it as one object; progress goes to stderr. Exit 0 when every run of
both sides completed without loss. Run from the repository root (``make bench-calls`` does)::

    .venv/bin/python bench/calls.py --platform asterisk --calls 200 --duration 30 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from ivr.cli.loadtest import add_loadtest_arguments, options_from_args
from ivr.config.load import DEMO_CONFIG, DEMO_TWILIO_AUTH_TOKEN
from ivr.harness import twilio_wire as wire
from ivr.harness.fake_asterisk import RtpPeer
from ivr.harness.loadtest import DRIVERS
from ivr.harness.loadtest.core import (
    HTTP_TIMEOUT_S,
    CallFailed,
    CallResult,
    Driver,
    Options,
    StreamRun,
    aligned,
    cost_rows,
    fmt,
    run,
)
from ivr.harness.twilio_sim import StreamStart

ROOT = Path(__file__).resolve().parents[1]
BARE_PORT_BASE = 41000  # just above the service's default RTP range (40000-40999)
START_TIMEOUT_S = 60.0  # ivr serve synthesises its prompts before it listens
RNG = random.Random()  # the bare RTP streams' sequence numbers, timestamps and SSRCs
_T = TypeVar("_T")


# -- processes --------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``ivr serve --workers N``'s workers), where /proc has them."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def rss_kib(pid: int | None) -> int | None:
    """The resident size (KiB) of process ``pid`` and its children, where /proc has it."""
    if pid is None:
        return None
    total = None
    for p in _tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = (total or 0) + int(line.split()[1])
    return total


async def rss_growth(
    pid: int | None, work: Awaitable[_T], base: int | None = None
) -> tuple[_T, int | None]:
    """``work``'s result, and how far process ``pid``'s resident size rose above ``base``
    (KiB; default: where it was before), its peak sampled every 0.2 s; None when it cannot be
    read."""
    peak = rss_kib(pid)
    base = peak if base is None else base

    async def sample() -> None:
        nonlocal peak
        while peak is not None:
            await asyncio.sleep(0.2)
            peak = max(peak, rss_kib(pid) or 0)

    sampler = asyncio.ensure_future(sample())
    try:
        result = await work
    finally:
        sampler.cancel()
    return result, None if base is None or peak is None else max(0, peak - base)


@contextlib.asynccontextmanager
async def spawn(
    what: str, args: Sequence[str], tmp: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Any]:
    """``python ARGS`` (run from the repository root, stderr to ``tmp/WHAT.log``) until the end
    of the block; yields the process and a function that raises RuntimeError with its log's
    tail, for when it did not start."""
    log = tmp / f"{what.replace(' ', '-')}.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
            env={"ARI_PASSWORD": "demo", **os.environ, **(env or {})},  # the load test's
        )

    def failed() -> RuntimeError:
        tail = log.read_text(errors="replace").strip()[-600:]
        return RuntimeError(f"{what} did not start: {tail or 'no output'}")

    try:
        yield proc, failed
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def serve(
    platform: str,
    ari_listen: str,
    workers: int = 1,
    max_calls: int | None = None,
    loop: str = "auto",
) -> AsyncIterator[tuple[str, int]]:
    """``ivr serve`` on a free loopback port with a fresh data directory (Asterisk: the demo
    configuration, its ARI url at ``ari_listen``), with ``workers`` worker processes, once
    /healthz answers: its URL and pid (the supervisor's, with workers). ``max_calls``: the
    demo's ``[limits] max_calls`` raised to this (the cap is per process, and the
    generator's pooled connections do not spread calls evenly over workers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with tempfile.TemporaryDirectory(prefix="ivr-bench-calls-") as tmp:
        args = ["-m", "ivr", "serve", "--port", url.rsplit(":", 1)[1], "--data-dir", f"{tmp}/var"]
        args += ["--loop", loop]
        if workers > 1:
            args += ["--workers", str(workers)]
        if platform == "asterisk":
            config = Path(tmp) / "asterisk.toml"
            text = (ROOT / "examples" / "asterisk-demo.toml").read_text()
            text = text.replace("127.0.0.1:8088", ari_listen)
            if max_calls is not None:
                text += f"\n[limits]\nmax_calls = {max_calls}\n"
            config.write_text(text)
            args += ["--config", str(config)]
        env = {}
        if platform == "twilio" and max_calls is not None:
            config = Path(tmp) / "twilio.toml"
            text = DEMO_CONFIG.read_text() + f"\n[limits]\nmax_calls = {max_calls}\n"
            config.write_text(text)
            args += ["--config", str(config)]
            env["TWILIO_AUTH_TOKEN"] = DEMO_TWILIO_AUTH_TOKEN  # what the generator signs with
        async with spawn("ivr serve", args, Path(tmp), env) as (proc, failed):
            async with aiohttp.ClientSession() as session:
                for _ in range(int(START_TIMEOUT_S / 0.2)):  # it synthesises its prompts first
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get(f"{url}/healthz") as resp:
                            if resp.status == 200:
                                break
                    if proc.returncode is not None:
                        raise failed()
                    await asyncio.sleep(0.2)
                else:
                    raise failed()
            yield url, proc.pid


# -- the bare reference -----------------------------------------------------------------------
class Reference:
    """A bare reference server (``bench/reference/``), started by ``spawn``: it prints ``ready
    <http-port> ...`` once listening and answers ``/cpu``, ``/stats`` (and ``/ports``)."""

    def __init__(self, session: aiohttp.ClientSession, proc: Any, ready: list[str]) -> None:
        self.session, self.pid = session, proc.pid
        self.base = f"http://127.0.0.1:{ready[1]}"

    async def get(self, path: str) -> dict[str, Any]:
        async with asyncio.timeout(10), self.session.get(self.base + path) as resp:
            answer = await resp.json()
        if not isinstance(answer, dict):
            raise ValueError(f"bare server {path}: not a JSON object")
        return answer

    async def read_cpu(self) -> float:
        return float((await self.get("/cpu"))["cpu_seconds"])

    async def frames_received(self, sent: int) -> int | None:
        """Its count of frames received, once the last of ``sent`` have landed (bounded)."""
        received: int | None = None
        for _ in range(20):
            try:
                received = int((await self.get("/stats"))["frames"])
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                return received
            if received >= sent:
                break
            await asyncio.sleep(0.1)
        return received


async def bare_twilio(driver: Any, result: CallResult, port: int) -> None:
    """One two-track media stream, as the service gets it, to the bare websocket server."""
    url = f"ws://127.0.0.1:{port}/ws"
    start = StreamStart(url, {}, ["inbound", "outbound"], wire.new_sid("CA"), wire.new_sid("AC"))
    try:
        streamer = await driver.stream_media(result, start)
    except CallFailed as exc:
        raise CallFailed(f"bare server: {exc}") from None
    if streamer.error is not None:
        raise CallFailed(f"bare server: {streamer.error}")
    if streamer.closed_at is None:
        raise CallFailed("bare server: timed out")


async def bare_asterisk(driver: Any, result: CallResult, port: int) -> None:
    """One call's RTP, numbered like a fake channel's stream, from a plain socket to ``port``."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            address = ("127.0.0.1", port)
            peer = RtpPeer(f"bare-{result.index}", address, "ulaw", rng=RNG)
            await driver.send_rtp(result, sock, peer)
    except OSError as exc:
        raise CallFailed(f"bare RTP stream: {type(exc).__name__}: {exc}") from None


# Per platform: the bare stream, and its timings in the reference's report.
BARE = {"twilio": (bare_twilio, ("stop_to_close_ms",)), "asterisk": (bare_asterisk, ())}
# A service field that 0 makes the reference pointless, and why.
NEEDS = {
    "twilio": ("calls_completed", "no call completed against the service"),
    "asterisk": ("frames_sent", "no call streamed to the service"),
}


def bare_ports(options: Options, given: str | None) -> str:
    """``--bare-ports``, or from BARE_PORT_BASE one per call and some slack."""
    slack = max(16, options.calls // 10)
    return given or f"{BARE_PORT_BASE}-{min(65535, BARE_PORT_BASE + options.calls + slack - 1)}"


async def fetch_health(url: str) -> dict[str, Any]:
    """The service's /healthz (empty if it cannot be read)."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            body = await resp.json()
            return body if isinstance(body, dict) else {}
    return {}


async def run_reference(
    platform: str, options: Options, ports: str, loop: str = "asyncio"
) -> dict[str, Any]:
    """The service's streaming load, the same generator and pacing, against the bare reference
    server; CallFailed if it cannot run."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    if platform == "twilio":
        script, args = "bare_ws_server.py", ["--port", "0"]
    else:
        script, args = "bare_rtp_server.py", ["--ports", ports]
    with tempfile.TemporaryDirectory(prefix="ivr-bench-bare-") as tmp:
        path = ROOT / "bench" / "reference" / script
        args = [str(path), *args, "--loop", loop]
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            spawn("bare server", args, Path(tmp)) as (proc, failed),
        ):
            assert proc.stdout is not None
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = (await proc.stdout.readline()).decode().split()
            if len(ready) < 2 or ready[0] != "ready":
                raise CallFailed(str(failed()))
            bare = Reference(session, proc, ready)
            if platform == "twilio":
                port_list = [int(ready[1])] * options.calls
            else:
                port_list = [int(p) for p in (await bare.get("/ports"))["ports"]]
                if len(port_list) < options.calls:
                    raise CallFailed(
                        f"bare RTP server bound only {len(port_list)} ports of {ports} "
                        f"({options.calls} needed; see --bare-ports)"
                    )
            driver: Driver[Any] = DRIVERS[platform](options, session)
            streams = StreamRun(options.calls, bare.read_cpu, driver.stream)
            bare_call, timed = BARE[platform]

            def call(result: CallResult) -> Awaitable[None]:
                return bare_call(driver, result, port_list[result.index])

            (_, report), rss = await rss_growth(bare.pid, driver.load(streams, call, "bare", timed))
            received = await bare.frames_received(report["frames_sent"])
    # The reference's calls are streams ("streams": how many, "streams_failed", ...).
    report = {
        k.replace("calls_attempted", "streams").replace("calls", "streams"): v
        for k, v in report.items()
    }
    return {
        **report,
        "frames_received": received,
        "frames_lost": report["frames_sent"] - received if received is not None else None,
        **({"ports": ports} if platform == "asterisk" else {}),
        "rss_kib_per_call": rss / options.calls if rss is not None else None,
    }


# -- the runs ---------------------------------------------------------------------------------
async def one_run(
    platform: str,
    options: Options,
    ports: str,
    pid: int | None,
    idle_rss: int | None,
    loop: str,
    side_by_side: bool = False,
) -> dict[str, Any]:
    """The load test against the service, then the same load against the bare reference (with
    ``side_by_side``, both at once, from this one process). The service's memory per call is
    its peak above ``idle_rss``, its size before the first run, so that anything an earlier
    run left behind counts against every later one."""
    reference: asyncio.Task[dict[str, Any]] | None = None
    if side_by_side:
        reference = asyncio.ensure_future(run_reference(platform, options, ports, loop))
    try:
        collector_before = (await fetch_health(options.url)).get("collector")
        report, rss = await rss_growth(pid, run(DRIVERS[platform], options), idle_rss)
        collector_after = (await fetch_health(options.url)).get("collector")
    except BaseException:
        if reference is not None:
            reference.cancel()
            await asyncio.gather(reference, return_exceptions=True)
        raise
    service = report["service"]
    if side_by_side:  # host-wide counts (tcp_segments): the two loads' would be mixed
        _drop_tcp(service["cost"])
    record: dict[str, Any] = {
        "calls_completed": report["calls_completed"],
        "frames_lost": report["frames_lost"],
        "server_cpu_per_call_minute": report["server_cpu_per_call_minute"],
        "bare_cpu_per_call_minute": None,
        "cpu_ratio": None,
        "whole_call_cpu_per_call_minute": report["service"]["whole_call_cost"].get(
            "server_cpu_per_call_minute"
        ),
        "bare_whole_cpu_per_call_minute": None,
        "whole_call_ratio": None,
        "service_fixed_cpu_ms_per_call": fixed_cpu_ms_per_call(
            service["whole_call_cost"],
            report["server_cpu_per_call_minute"],
            report["calls_completed"],
        ),
        "bare_fixed_cpu_ms_per_call": None,
        "calls_per_core": per_core(report["server_cpu_per_call_minute"]),
        "bare_calls_per_core": None,
        **{k: v for k, v in report.items() if k.endswith(("_p50_ms", "_p99_ms"))},
        "service_rss_kib_per_call": rss / options.calls if rss is not None else None,
        "bare_rss_kib_per_call": None,
        "service_tcp_acks_per_data_segment": service["cost"].get("tcp_acks_per_data_segment"),
        "service_collector": (pauses := collector_pauses(collector_before, collector_after)),
        "service_gc_paused_ms": pauses["paused_ms"] if pauses else None,
        "service_gc_longest_at_most_ms": pauses["longest_at_most_ms"] if pauses else None,
        "bare_tcp_acks_per_data_segment": None,
        "windows_overlap": None,
        "reference": None,
        "reference_error": None,
        "service": service,
        "errors": report["errors"],
    }
    lag = DRIVERS[platform].lag[0]  # the end-of-call lag
    record[f"{lag.removesuffix('_ms')}_p99_ms"] = service[lag]["p99"]
    key, why = NEEDS[platform]
    if not service[key] and reference is None:
        record["reference_error"] = f"skipped: {why}"
    else:
        try:
            record["reference"] = ref = await (
                reference or run_reference(platform, options, ports, loop)
            )
        except (CallFailed, RuntimeError, TimeoutError, aiohttp.ClientError, KeyError) as exc:
            record["reference_error"] = str(exc) or type(exc).__name__
        else:
            ours = record["server_cpu_per_call_minute"]
            bare = record["bare_cpu_per_call_minute"] = ref["cost"].get(
                "server_cpu_per_call_minute"
            )
            record["cpu_ratio"] = round(ours / bare, 3) if ours and bare else None
            record["bare_calls_per_core"] = per_core(bare)
            whole = record["whole_call_cpu_per_call_minute"]
            bare_whole = record["bare_whole_cpu_per_call_minute"] = ref["whole_call_cost"].get(
                "server_cpu_per_call_minute"
            )
            record["whole_call_ratio"] = (
                round(whole / bare_whole, 3) if whole and bare_whole else None
            )
            record["bare_fixed_cpu_ms_per_call"] = fixed_cpu_ms_per_call(
                ref["whole_call_cost"], bare, ref["streams_completed"]
            )
            record["bare_rss_kib_per_call"] = ref["rss_kib_per_call"]
            if side_by_side:
                _drop_tcp(ref["cost"])
            record["bare_tcp_acks_per_data_segment"] = ref["cost"].get("tcp_acks_per_data_segment")
            record["windows_overlap"] = overlap(report["service"]["cost"], ref["cost"])
            record["errors"] = (record["errors"] + ref["errors"])[:5]
    ref = record["reference"]
    record["ok"] = bool(report["ok"] and ref and ref["streams_failed"] == 0)
    return record


def collector_pauses(before: Any, after: Any) -> dict[str, Any] | None:
    """The service's garbage collections during a run, from its /healthz ``collector`` before
    and after (ivr/collector_pauses.py): how many, the time paused in all, and the smallest
    histogram bound no pause of the run went over (None: above the largest). None when the
    service does not say (not timing them, an older one, /healthz unread); with workers, those
    of whichever process answered."""
    try:
        if not (before["watched"] and after["watched"]):
            return None
        count = sum(after["collections"]) - sum(before["collections"])
        over = {
            float(b): after["pauses_over_ms"][b] - before["pauses_over_ms"].get(b, 0)
            for b in after["pauses_over_ms"]
        }
        paused = after["paused_seconds"] - before["paused_seconds"]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    within = [bound for bound, n in sorted(over.items()) if n == 0]
    if not count:
        longest: float | None = 0.0
    else:
        longest = within[0] if within else None
    return {
        "collections": count,
        "paused_ms": round(paused * 1000, 1),
        "longest_at_most_ms": longest,
    }


def _drop_tcp(cost: dict[str, Any]) -> None:
    for key in [k for k in cost if k.startswith("tcp_")]:
        del cost[key]


def overlap(one: dict[str, Any], other: dict[str, Any]) -> float | None:
    """How much of the shorter of two CPU windows the other covers (0 to 1): about 1 when the
    service and the reference ran side by side, 0 when one ran after the other."""
    if not (one.get("window") and other.get("window")):
        return None
    start = max(one["window_from"], other["window_from"])
    end = min(one["window_to"], other["window_to"])
    shorter = min(one["window_s"], other["window_s"])
    return round(max(0.0, end - start) / shorter, 3) if shorter > 0 else None


def fixed_cpu_ms_per_call(
    whole: dict[str, Any], steady_per_call_minute: float | None, calls: int
) -> float | None:
    """What a call costs beyond its streaming, in CPU ms: the whole window's CPU less what its
    call-minutes would have cost at the steady rate, per call. It is the part of the whole-call
    figure that does not shrink with longer calls (webhooks, handshakes, the consent phase,
    set-up and finalisation), an estimate that takes the steady rate to hold over every call's
    first and last seconds too. None where either figure is missing."""
    cpu, minutes = whole.get("server_cpu_s"), whole.get("call_minutes")
    if cpu is None or minutes is None or not steady_per_call_minute or calls <= 0:
        return None
    return round(1000 * (cpu - steady_per_call_minute * minutes) / calls, 2)


def per_core(cpu_per_call_minute: float | None) -> int | None:
    """Real-paced calls one core could carry at this CPU per call-minute: an estimate from CPU
    (60 CPU seconds a minute), not a measured point of lag; run ``--calls N`` to see one."""
    return int(60 / cpu_per_call_minute) if cpu_per_call_minute else None


SUMMARISED = (
    "cpu_ratio",
    "whole_call_ratio",
    "server_cpu_per_call_minute",
    "bare_cpu_per_call_minute",
    "whole_call_cpu_per_call_minute",
    "bare_whole_cpu_per_call_minute",
    "service_fixed_cpu_ms_per_call",
    "bare_fixed_cpu_ms_per_call",
    "calls_per_core",
    "bare_calls_per_core",
    "service_rss_kib_per_call",
    "bare_rss_kib_per_call",
    "service_tcp_acks_per_data_segment",
    "bare_tcp_acks_per_data_segment",
    "service_gc_paused_ms",
    "service_gc_longest_at_most_ms",
)


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """min/median/max of each number over the runs (None where no run measured it)."""
    keys = [*SUMMARISED, *(k for k in runs[0] if k.endswith(("_p50_ms", "_p99_ms")))]
    out: dict[str, dict[str, float] | None] = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = (
            {"min": min(values), "median": statistics.median(values), "max": max(values)}
            if values
            else None
        )
    return out


def run_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """One run's lines: the CPU of both sides and the ratio, as ``ivr loadtest`` printed them."""
    s, ref = record["service"], record["reference"]
    rows = [
        (
            "calls",
            f"{s['calls_completed']}/{s['calls_attempted']} completed, frames lost "
            f"{fmt(s['frames_lost'])}",
        ),
        *cost_rows("service cpu", s["cost"], s["ticker"]),
    ]
    if ref:
        rows += cost_rows("bare cpu", ref["cost"], ref["ticker"])
        rows.append(
            (
                "  bare streams",
                f"{ref['streams_completed']}/{ref['streams']} completed, frames sent "
                f"{fmt(ref['frames_sent'])}, received {fmt(ref['frames_received'])}",
            )
        )
        ratio, whole = record["cpu_ratio"], record["whole_call_ratio"]
        rows.append(("  collector", collector_line(record["service_collector"])))
        rows.append(("cpu ratio", f"{ratio:.2f} (service / bare, steady)" if ratio else "-"))
        if record["windows_overlap"] is not None:
            rows.append(
                (
                    "  windows overlap",
                    f"{record['windows_overlap']:.0%} (of the shorter CPU window: "
                    "how far the two were measured at the same time)",
                )
            )
        rows.append(
            (
                "whole-call ratio",
                f"{whole:.2f} (service {fmt(record['whole_call_cpu_per_call_minute'])} CPU s per "
                f"call-minute from first webhook to last finalised / bare "
                f"{fmt(record['bare_whole_cpu_per_call_minute'])})"
                if whole
                else "-",
            )
        )
        rows.append(("  per call", fixed_line(record)))
        rows.append(
            (
                "calls per core",
                f"{fmt(record['calls_per_core'])} (bare {fmt(record['bare_calls_per_core'])}; "
                f"60 s / CPU s per call-minute, an estimate)",
            )
        )
        rows.append(("memory per call", memory_line(record)))
    else:
        rows.append(("bare cpu", f"failed: {record['reference_error']}"))
    rows += [("errors" if i == 0 else "", e) for i, e in enumerate(record["errors"])]
    return rows


def fixed_line(record: dict[str, Any]) -> str:
    """Both sides' CPU per call beyond streaming (``fixed_cpu_ms_per_call``)."""
    mine, bare = record["service_fixed_cpu_ms_per_call"], record["bare_fixed_cpu_ms_per_call"]
    if mine is None:
        return "-"
    return (
        f"{mine:.1f} CPU ms beyond streaming (bare {fmt(bare)}): the whole window's CPU less "
        "its call-minutes at the steady rate, per call"
    )


def memory_line(record: dict[str, Any]) -> str:
    """Both sides' resident memory per call, each its peak during the run above where it was
    before the service's first run (the reference's: before its own run)."""
    mine, bare = record["service_rss_kib_per_call"], record["bare_rss_kib_per_call"]
    if mine is None:
        return "- (no /proc to read it from)"
    return f"{mine:.1f} KiB (bare {fmt(bare)}; peak resident size above the idle process, per call)"


def collector_line(pauses: dict[str, Any] | None) -> str:
    if pauses is None:
        return "- (the service's /healthz does not say)"
    longest = pauses["longest_at_most_ms"]
    bound = (
        "no pause"
        if not pauses["collections"]
        else (f"each at most {longest:g} ms" if longest is not None else "one over 250 ms")
    )
    return (
        f"{pauses['collections']} garbage collections, {pauses['paused_ms']:g} ms paused in all, "
        f"{bound} (the service's, during its run)"
    )


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("", f"min / median / max over {len(result['runs'])} runs")]
    for key, d in result["summary"].items():
        label = key.removesuffix("_ms").replace("_", " ") + (" ms" if key.endswith("_ms") else "")
        rows.append(
            (label, " / ".join(f"{d[k]:.3g}" for k in ("min", "median", "max")) if d else "-")
        )
    rows.append(("result", "OK" if result["ok"] else "FAILED"))
    return rows


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """``--repeats`` runs against the service (started here unless ``--url``) and the bare
    reference; the runs, their summary and the verdict."""
    async with contextlib.AsyncExitStack() as stack:
        pid = None
        if args.url is None:
            print(f"bench-calls: starting ivr serve ({args.platform})", file=sys.stderr)
            # Every process may hold all the calls: the demo's cap (200 calls per process)
            # would turn some away, and pooled connections do not spread calls evenly.
            started = serve(
                args.platform, args.ari_listen, args.workers, args.calls + 50, args.loop
            )
            args.url, pid = await stack.enter_async_context(started)
        options = options_from_args(args)
        options.check()
        ports = bare_ports(options, args.bare_ports)
        idle_rss = rss_kib(pid)
        health = await fetch_health(args.url)
        loop = health.get("event_loop", "asyncio")
        print(f"bench-calls: the service runs on {loop}; so will the reference", file=sys.stderr)
        hot_path = health.get("hot_path", "source")  # hotpath.py: compiled or as written
        print(f"bench-calls: the service's hot path runs {hot_path}", file=sys.stderr)
        runs = []
        for i in range(args.repeats):
            print(f"bench-calls: run {i + 1}/{args.repeats}", file=sys.stderr)
            runs.append(
                await one_run(args.platform, options, ports, pid, idle_rss, loop, args.side_by_side)
            )
            last = runs[-1]
            print(f"bench-calls: cpu ratio {fmt(last['cpu_ratio'])}", file=sys.stderr)
    return {
        "platform": args.platform,
        "url": options.url,
        "calls": options.calls,
        "workers": args.workers,
        "event_loop": loop,
        "hot_path": hot_path,
        "duration_s": options.duration,
        "repeats": args.repeats,
        "side_by_side": args.side_by_side,
        "runs": runs,
        "summary": summary(runs),
        "ok": all(r["ok"] for r in runs),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/calls.py",
        description="The service's CPU per call-minute against a bare reference server under "
        "the same load, with latencies and memory, over --repeats runs (make bench-calls). "
        "Without --url it starts ivr serve itself.",
    )
    add_loadtest_arguments(p)
    p.set_defaults(url=None)  # start ivr serve
    p.add_argument("--repeats", type=int, default=3, help="runs of both sides (default 3)")
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the service's event loop (ivr serve --loop; default auto: uvloop where installed); "
        "the reference runs on the same one",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ivr serve --workers N (default 1): the service's CPU and memory are those of all "
        "its processes; the reference stays one process",
    )
    p.add_argument(
        "--side-by-side",
        action="store_true",
        help="load the reference at the same time as the service (the same generator process "
        "drives both), so that the machine's speed, which drifts between runs a minute apart, "
        "is the same for both; for loads the machine carries twice over with room to spare "
        "(Asterisk at 250 calls: about half a core in all)",
    )
    p.add_argument(
        "--bare-ports",
        default=None,
        metavar="LOW-HIGH",
        help=f"asterisk: UDP ports for the bare reference, one per call (default from "
        f"{BARE_PORT_BASE})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options_from_args(args).check()  # before anything starts
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if not 1 <= args.workers <= 64:
            raise ValueError("--workers must be 1..64")
        if args.workers > 1 and (args.platform != "twilio" or args.url is not None):
            raise ValueError("--workers: only for Twilio, with the service started here")
        result = asyncio.run(bench(args))
    except ValueError as exc:
        print(f"bench/calls.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        n = len(result["runs"])
        rows = [
            row
            for i, r in enumerate(result["runs"])
            for row in [("run", f"{i + 1} of {n}"), *run_rows(r)]
        ]
        reference = "at the same time" if result["side_by_side"] else "after the service"
        head = [("event loop", result["event_loop"]), ("hot path", result.get("hot_path", "-"))]
        head.append(("reference loaded", reference))
        print(aligned([*head, *rows, *summary_rows(result)]))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
