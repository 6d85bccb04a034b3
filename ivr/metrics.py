"""``/metrics``: what ``/healthz`` shows, and more, in the Prometheus text format.

prometheus-client writes the exposition format; each application has its own
``CollectorRegistry`` (never the process-wide one: tests build many applications in one
process). docs/operations.md lists the series and what to watch. Three sources:

- **as things happen**, told by the call registry (``CallObserver``): call set-up latency (from
  the platform's first word to the caller hearing us, ``CallSession.setup_seconds``), calls
  finished by outcome, frames stored and lost, recordings closed by status, vault write errors;
- **at each scrape**, read where ``/healthz`` reads them: every key of the platforms' counters
  (``ivr_twilio_<key>_total``, ``ivr_asterisk_<key>_total``), calls and recordings in progress,
  the ARI connection, pressing breaches; the audit head as published; refused requests
  (``ivr_requests_refused_total``: the API without a valid token, by reason; Twilio webhooks
  with a bad signature; Twilio streams refused); the garbage collector's pauses
  (``ivr_gc_pause_seconds``, ivr/collector_pauses.py); and the process (CPU, memory,
  descriptors);
- nothing personal: no number, no call id, no token name is a label.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ivr import __version__
from ivr.api import REFUSALS_KEY
from ivr.app_keys import CALLS, CLOCK, VAULT
from ivr.audit_heads import HEAD_PUBLISHER
from ivr.collector_pauses import PAUSE_BUCKETS, PAUSES, CollectorPauses
from ivr.gdpr import breach
from ivr.platforms.twilio.app import TWILIO
from ivr.supervision import LoopHealth
from storage.catalog import RecordingStatus
from storage.files import parse_utc

if TYPE_CHECKING:
    from ivr.calls import Call
    from ivr.platforms.asterisk.app import AriApplication
    from storage.catalog import RecordingRow

# From a fast webhook answer to a slow ARI set-up (channel, bridge, external media, RTP).
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_]")


class ServiceMetrics:
    """One application's metrics; registered with its ``CallRegistry`` as an observer."""

    def __init__(
        self,
        ari: Callable[[], AriApplication | None] = lambda: None,
        loops: Callable[[], Mapping[str, LoopHealth]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self._ari = ari
        self._loops = loops
        self._scraped: list[Metric] = []  # set by refresh(), yielded by the collector
        r = self.registry
        self.setup_seconds = Histogram(
            "ivr_call_setup_seconds",
            "From the platform's first word about a call to the caller hearing us",
            ["platform"],
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.calls_finished = Counter(
            "ivr_calls_finished", "Calls ended, by outcome", ["platform", "outcome"], registry=r
        )
        self.frames_stored = Counter(
            "ivr_frames_stored",
            "Audio frames stored, counted at the call's end",
            ["platform"],
            registry=r,
        )
        self.frames_lost = Counter(
            "ivr_frames_lost",
            "Audio frames that should have been stored and were not (disk, overflow)",
            ["platform"],
            registry=r,
        )
        self.vault_write_errors = Counter(
            "ivr_vault_write_errors",
            "Writes the vault refused during calls (a frame, a recording's start)",
            registry=r,
        )
        self.recordings_closed = Counter(
            "ivr_recordings_closed",
            "Recordings closed at a call's end, by status",
            ["status"],
            registry=r,
        )
        ProcessCollector(registry=r)
        r.register(_Scraped(self))

    # -- CallObserver ----------------------------------------------------------------------
    def began(self, call: Call) -> None:
        if call.session is not None and call.session.setup_seconds is not None:
            self.setup_seconds.labels(call.platform).observe(call.session.setup_seconds)

    def finished(self, call: Call, row: RecordingRow | None) -> None:
        self.calls_finished.labels(call.platform, call.outcome).inc()
        if call.session is not None:
            stats = call.session.stats
            self.frames_stored.labels(call.platform).inc(stats.frames_stored)
            self.frames_lost.labels(call.platform).inc(stats.frames_lost)
            self.vault_write_errors.inc(stats.vault_errors)
        if row is not None:
            self.recordings_closed.labels(row.status.value).inc()

    # -- scrape ----------------------------------------------------------------------------
    async def refresh(self, app: web.Application) -> None:
        """Read what the scrape shows: the catalog in a thread, the rest here in the loop."""
        vault = app[VAULT]
        now = app[CLOCK]()

        def from_catalog() -> tuple[int, int, list[str]]:
            in_progress = len(vault.list(status=RecordingStatus.RECORDING))
            seq, _ = vault.catalog.audit_head()
            urgencies = [breach.urgency(b, now) for b in breach.all_breaches(vault)]
            return in_progress, seq, urgencies

        out: list[Metric] = []
        try:
            in_progress, audit_seq, urgencies = await asyncio.to_thread(from_catalog)
        except Exception:  # the catalog cannot be read (/healthz says why): no 500 here either
            catalog_ok, in_progress, audit_seq, urgencies = False, -1, -1, []
        else:
            catalog_ok = True
        out.append(_gauge("ivr_catalog_ok", "1 while the catalog can be read", catalog_ok))
        out.extend(_loops(self._loops()))
        info = GaugeMetricFamily("ivr_build_info", "The running version", labels=["version"])
        info.add_metric([__version__], 1)
        out.append(info)

        twilio = app.get(TWILIO)
        ari = self._ari()
        calls = app.get(CALLS)
        by_platform = GaugeMetricFamily(
            "ivr_calls_in_progress", "Calls the service holds now", labels=["platform"]
        )
        for platform in ("twilio", "asterisk"):
            by_platform.add_metric([platform], len(calls.calls(platform)) if calls else 0)
        out.append(by_platform)
        out.append(
            _gauge(
                "ivr_open_recordings", "Recordings open in this process", len(vault.open_recordings)
            )
        )
        out.append(
            _gauge(
                "ivr_recordings_in_progress",
                "Recordings the catalog holds as recording (any process)",
                in_progress,
            )
        )
        if twilio is not None:
            out.append(_gauge("ivr_accepting_calls", "1 until shutdown begins", twilio.accepting))
            out.extend(_counters("twilio", twilio.counters))
        if ari is not None:
            out.append(
                _gauge(
                    "ivr_asterisk_ok", "1 while /healthz finds no ARI problem", ari.problem is None
                )
            )
            out.append(_gauge("ivr_asterisk_connected", "ARI events socket up", ari.connected))
            out.append(
                _gauge(
                    "ivr_asterisk_application_replaced",
                    "Another client took our ARI application name",
                    ari.replaced,
                )
            )
            out.append(
                _counter("ivr_asterisk_connections", "ARI connections made", ari.connections)
            )
            out.extend(_counters("asterisk", ari.counters))
        pressing = GaugeMetricFamily(
            "ivr_breaches_pressing",
            "Breaches whose 72-hour notification deadline is near or past",
            labels=["urgency"],
        )
        for urgency in ("nearly due", "overdue"):
            pressing.add_metric([urgency.replace(" ", "_")], urgencies.count(urgency))
        out.append(pressing)
        out.append(_refused(app, twilio.counters if twilio is not None else {}))
        out.append(_collector(PAUSES))
        out.extend(_audit(app, audit_seq))
        self._scraped = out

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics._scraped)

    def describe(self) -> Iterable[Metric]:
        return []  # the series change with the platforms' counters: not described up front


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def _counters(platform: str, counters: Mapping[str, int]) -> Iterator[CounterMetricFamily]:
    """Every key of a platform's Counter (as /healthz shows them), one counter each."""
    for key, value in sorted(counters.items()):
        name = f"ivr_{platform}_{_NOT_A_NAME.sub('_', key)}".removesuffix("_total")
        yield _counter(name, f"{platform} counter {key!r} (as /healthz shows it)", value)


def _loops(loops: Mapping[str, LoopHealth]) -> Iterator[Metric]:
    """The background loops as /healthz reports them (ivr/supervision.py)."""
    ok = GaugeMetricFamily("ivr_loop_ok", "1 while a background loop is healthy", labels=["loop"])
    failures = CounterMetricFamily(
        "ivr_loop_failures", "Unexpected errors in a background loop", labels=["loop"]
    )
    restarts = CounterMetricFamily(
        "ivr_loop_restarts", "Restarts of a background loop after an error", labels=["loop"]
    )
    for name, health in sorted(loops.items()):
        ok.add_metric([name], float(health.problem is None))
        failures.add_metric([name], health.failures)
        restarts.add_metric([name], health.restarts)
    yield from (ok, failures, restarts)


def _refused(app: web.Application, twilio: Mapping[str, int]) -> CounterMetricFamily:
    refused = CounterMetricFamily(
        "ivr_requests_refused",
        "Requests refused before anyone was identified",
        labels=["surface", "reason"],
    )
    ledger = app.get(REFUSALS_KEY)
    for reason, count in sorted(ledger.total.items() if ledger is not None else ()):
        refused.add_metric(["api", reason], count)
    refused.add_metric(["twilio_webhook", "bad signature"], twilio.get("webhooks_forbidden", 0))
    refused.add_metric(["twilio_stream", "refused"], twilio.get("streams_refused", 0))
    return refused


def _collector(pauses: CollectorPauses) -> HistogramMetricFamily:
    buckets = [
        (f"{bound:g}", float(n)) for bound, n in zip(PAUSE_BUCKETS, pauses.at_most, strict=True)
    ]
    return HistogramMetricFamily(
        "ivr_gc_pause_seconds",
        "How long each garbage collection stopped the process (every call waits behind it)",
        buckets=[*buckets, ("+Inf", float(pauses.count))],
        sum_value=pauses.paused_seconds,
    )


def _audit(app: web.Application, seq: int) -> Iterator[Metric]:
    yield _gauge("ivr_audit_entries", "Entries in the audit chain (its head's number)", seq)
    publisher = app.get(HEAD_PUBLISHER)
    if publisher is None:
        return
    last = publisher.last
    yield _gauge(
        "ivr_audit_head_published_entry",
        "The chain entry last published to the heads file by this process",
        last.seq if last else 0,
    )
    yield _gauge(
        "ivr_audit_head_published_timestamp_seconds",
        "When this process last published the audit head (Unix time; 0: never)",
        parse_utc(last.at).timestamp() if last else 0,
    )
    yield _counter(
        "ivr_audit_head_publish_errors",
        "Audit heads that could not be written to the heads file",
        publisher.errors,
    )


METRICS = web.AppKey("metrics", ServiceMetrics)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[METRICS]
    await service.refresh(request.app)
    return web.Response(body=service.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics(
    app: web.Application,
    *,
    ari: Callable[[], AriApplication | None] = lambda: None,
    loops: Callable[[], Mapping[str, LoopHealth]] = dict,
) -> ServiceMetrics:
    """``GET /metrics``; the returned object still has to be made an observer of the calls."""
    service = ServiceMetrics(ari, loops)
    app[METRICS] = service
    app.router.add_get("/metrics", metrics)
    return service
