"""The aiohttp service: the vault, the Twilio webhooks and streams, and ``/healthz``.

Resources are opened in ``cleanup_ctx`` generators, so that on SIGTERM aiohttp first runs the
shutdown hooks (stop taking calls, close every stream, which finalises open recordings) and
then closes the vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

import hotpath
from ivr import __version__, api, collector_pauses, serving
from ivr.app_keys import CALLS, CLOCK, CONFIG, DATA_DIR, VAULT, WORKER
from ivr.audit_heads import HEAD_PUBLISHER, HeadPublisher, publish_heads
from ivr.calls import CallRegistry
from ivr.calls.handover import HandoverListener
from ivr.calls.relay import RELAY, Relay, RelayAuth, pass_on_held
from ivr.config import Config
from ivr.gdpr import breach
from ivr.leadership import RETRY_SECONDS, Leader, leadership_for
from ivr.metrics import METRICS, add_metrics
from ivr.platforms.asterisk.app import AriApplication
from ivr.platforms.twilio.app import TWILIO, TwilioCalls, add_routes
from ivr.platforms.twilio.stream_token import StreamTokens
from ivr.prompt_library import PromptLibrary, cache_dir
from ivr.supervision import LoopHealth, describe, in_thread, supervise
from ivr.workers import (
    ALONE,
    Worker,
    all_workers_cpu_seconds,
    announce_ready,
    watch_supervisor,
)
from storage import lifecycle
from storage.audit import heads_file
from storage.catalog import RecordingStatus
from storage.keys import now_utc
from storage.liveness import LeaseTerms
from storage.retirement import KeySchedule, run_schedule
from storage.vault import Vault

log = logging.getLogger(__name__)

# How soon what a dead process left (its recordings, its calls) is finished by another running
# on the same vault: its lock is free the moment it dies, so this is the whole delay. On a
# catalog shared between machines the lease must lapse first (``[cluster] lease_seconds``), and
# the round comes at least once a lease time.
DEAD_PROCESS_RECOVERY_SECONDS = 10.0
# Dead processes' rows in the catalog, once they hold nothing open, are removed this many lease
# times after their lease expired (a process only cut off registers again).
FORGET_AFTER_LEASES = 20

ARI = web.AppKey("ari", AriApplication)
# The background loops' health, by name, for /healthz (ivr/supervision.py).
LOOPS = web.AppKey[dict[str, LoopHealth]]("loops")
LEADERSHIP = web.AppKey[Leader]("leadership")
REFUSAL_WINDOW_SECONDS = 60.0  # refused API requests: one window's count per audit entry
# How often a process that does not run the background jobs tries to take them over: a dead
# holder's lock is free at once (ivr/leadership.py), its jobs should not wait a sweep interval.
LEADERSHIP_RETRY_SECONDS = RETRY_SECONDS


async def _cannot_adopt(sock: socket.socket, head: bytes) -> bool:
    return False


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def create_app(
    config: Config,
    data_dir: Path,
    *,
    clock: Callable[[], datetime] = now_utc,
    prompt_cache: Path | None = None,
    fsync: bool = True,
    sweep_interval: float | None = None,
    audit_head_interval: float | None = None,
    refusal_window: float = REFUSAL_WINDOW_SECONDS,
    worker: Worker = ALONE,
    recovery_interval: float = DEAD_PROCESS_RECOVERY_SECONDS,
) -> web.Application:
    """The service. Each resource opens in its own ``cleanup_ctx`` step, in this order, and
    closes in the reverse order; a step that fails at start closes only the steps before it.
    ``worker``: which of ``ivr serve --workers N``'s processes this is (ivr/workers.py)."""
    # A request for a call another process holds is passed on to it (ivr/calls/relay.py).
    app = web.Application(middlewares=[pass_on_held])
    app[CONFIG] = config
    app[WORKER] = worker
    app[DATA_DIR] = data_dir
    app[CLOCK] = clock
    loops = app[LOOPS] = {}
    head_file = heads_file(config.audit_head_file, data_dir)
    lease_terms = LeaseTerms.lasting(config.lease_seconds)

    async def vault_ctx(app: web.Application) -> AsyncIterator[None]:
        for warning in config.warnings:
            log.warning("configuration: %s", warning)
        custody = {t.id: t.public_key for t in config.tenants.values()}
        vault = await asyncio.to_thread(
            lambda: Vault(
                data_dir,
                clock=clock,
                fsync=fsync,
                public_keys=custody,
                catalog_url=config.catalog_url,
                blob_url=config.blob_url,
                keyring_url=config.keyring_url,
                lease=lease_terms,
            )
        )
        app[VAULT] = vault
        detail: dict[str, object] = {
            "reason": "service start",
            "source": str(config.source) if config.source else None,
            "sha256": _file_sha256(config.source),
            "demo": config.demo,
            "tenants": sorted(config.tenants),
            "lines": len(config.lines),
            "audit_head_file": str(head_file),
        }
        # Through the kept writes: a service restarted on a full disk starts and takes calls
        # (degraded, /healthz says so); the entry is written when the disk takes it.
        vault.pending.write(
            "audit config.loaded",
            lambda db: vault.catalog.audit(
                db, actor="system", action="config.loaded", detail=detail
            ),
        )
        yield
        await asyncio.to_thread(vault.close)
        log.info("vault closed")

    async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
        """The audit head published (start, schedule, shutdown; ivr/audit_heads.py), and the
        API's refused requests written in aggregate (ivr/api/refusals.py)."""
        publisher = app[HEAD_PUBLISHER] = HeadPublisher(app[VAULT], head_file, clock)
        await asyncio.to_thread(publisher.check_published)
        await _publish_head(publisher, "start")
        interval = (
            audit_head_interval
            if audit_head_interval is not None
            else config.audit_head_interval_minutes * 60
        )
        heads = loops["audit_heads"] = LoopHealth("audit head publication")
        refusals = loops["api_refusals"] = LoopHealth("refused API requests")
        flush = api.flush_refusals_every
        tasks = [
            asyncio.create_task(
                supervise(heads, lambda: publish_heads(publisher, interval, heads)),
                name="audit-heads",
            ),
            asyncio.create_task(
                supervise(refusals, lambda: flush(app, refusal_window, refusals)),
                name="api-refusals",
            ),
        ]
        yield
        for task in tasks:
            await _cancel(task)
        # What the later steps wrote while stopping is in by now; the vault closes next.
        try:
            await api.flush_refusals(app)
        except Exception:
            log.exception("the last refused API requests could not be audited")
        await _publish_head(publisher, "shutdown")

    async def calls_ctx(app: web.Application) -> AsyncIterator[None]:
        prompts = await asyncio.to_thread(
            PromptLibrary.load,
            config,
            prompt_cache or cache_dir(data_dir),
            progress=lambda line: log.info("prompts: %s", line.strip()),
        )
        registry = CallRegistry(app[VAULT], prompts, clock=clock)
        registry.observers.append(app[METRICS])
        app[CALLS] = registry
        registry.retry_kept_writes()  # what the start could not write (a restart on a full disk)
        health = loops["call_expiry"] = LoopHealth("call expiry")
        expiry = asyncio.create_task(
            supervise(health, lambda: _expire_calls(registry, health)), name="call-expiry"
        )
        yield
        await _cancel(expiry)
        # Whatever a platform has not finished by now (it had its chance in its own step).
        await registry.finish_all("service shutting down")
        await registry.close()

    async def twilio_ctx(app: web.Application) -> AsyncIterator[None]:
        # Twilio calls a dead process left open cannot be picked up again (their streams went
        # with it): their rows are closed now. A late status callback finds no call.
        orphans = await app[CALLS].close_orphans("twilio", clock())
        if orphans:
            log.warning("closed %d Twilio call record(s) an earlier run left open", len(orphans))
        twilio = app[TWILIO] = TwilioCalls(
            config=config,
            calls=app[CALLS],
            # Derived from the master key: any process of the service can check a token.
            tokens=StreamTokens.from_key(
                app[VAULT].keyring.service_key, config.stream_token_ttl_seconds
            ),
            clock=clock,
        )
        # Streams name this process (their URLs); one that lands on another process of this
        # machine is handed over to it whole, not relayed (ivr/calls/handover.py).
        twilio.holder_id = app[VAULT].writer_id
        guard = app.get(serving.CONNECTIONS)  # None: not served by ivr.serving (tests)
        handover = HandoverListener(
            twilio.holder_id,
            guard.adopt if guard is not None else _cannot_adopt,
            twilio.counters,
        )
        twilio.handover = guard is not None and handover.start()
        auth = RelayAuth(app[VAULT].keyring.service_key("relay"))
        relay = app[RELAY] = twilio.relay = Relay(app[VAULT], twilio.counters, auth)

        def relay_routes(listener: web.Application) -> None:
            listener[TWILIO] = twilio
            add_routes(listener, relay_listener=True)

        # Other processes on this catalog pass requests for our calls here.
        host, port, advertise = relay_address(config, worker)
        await relay.listen(relay_routes, host=host, port=port, advertise=advertise)
        yield  # its streams close in the on_shutdown hook, before any cleanup step runs
        handover.close()
        await relay.close()

    async def asterisk_ctx(app: web.Application) -> AsyncIterator[None]:
        if config.asterisk is None:
            yield
            return
        ari_app = AriApplication(worker_asterisk(config, worker), app[CALLS], clock=clock)
        app[ARI] = ari_app
        await ari_app.start()
        yield
        await ari_app.stop()

    async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
        interval = (
            sweep_interval if sweep_interval is not None else config.retention_sweep_minutes * 60
        )
        keys = KeySchedule(
            rotate_every_days=config.key_rotate_every_days,
            retire_after_days=config.key_retire_after_days,
        )
        health = loops["retention_sweeper"] = LoopHealth("retention sweeper")
        leadership = app[LEADERSHIP] = await asyncio.to_thread(
            leadership_for, app[VAULT], lease_terms
        )
        # Claimed before the loops start, so that a process that gets the jobs runs its first
        # round (the breach watch first) at once, as before any other work.
        await in_thread(leadership.claim)
        keeper_health = loops["leadership"] = LoopHealth("background jobs' leadership")
        keeper = asyncio.create_task(
            supervise(keeper_health, lambda: _keep_leadership(leadership, keeper_health)),
            name="leadership",
        )
        sweeper = asyncio.create_task(
            supervise(
                health,
                lambda: _retention_sweeper(
                    app[VAULT], clock, interval, config.call_record_days, keys, health, leadership
                ),
            ),
            name="retention-sweeper",
        )
        recovery_health = loops["dead_process_recovery"] = LoopHealth("dead-process recovery")
        shared = app[VAULT].catalog.kind == "postgresql"
        every = min(recovery_interval, lease_terms.seconds) if shared else recovery_interval
        forget = lease_terms.seconds * FORGET_AFTER_LEASES if shared else None
        recovery = asyncio.create_task(
            supervise(
                recovery_health,
                lambda: _recover_dead_holders(
                    app[CALLS], leadership, every, recovery_health, forget
                ),
            ),
            name="dead-process-recovery",
        )
        log.info(
            "serving %d line(s) for %d tenant(s)%s; vault at %s",
            len(config.lines),
            len(config.tenants),
            " (embedded demo configuration)" if config.demo else "",
            data_dir,
        )
        yield
        await _cancel(recovery)
        await _cancel(sweeper)
        await _cancel(keeper)
        await asyncio.to_thread(leadership.release)

    api.configure(
        app,
        tokens={
            t.token_sha256: api.ApiToken(t.name, t.tenant, t.role, t.token_sha256, t.expires)
            for t in config.api_tokens
        },
        tenants=dict(config.tenants),
    )
    app.cleanup_ctx.extend([vault_ctx, audit_ctx, calls_ctx, twilio_ctx, asterisk_ctx, sweeper_ctx])
    app.router.add_get("/healthz", healthz)
    add_metrics(app, ari=lambda: app.get(ARI), loops=lambda: loops)
    add_routes(app)
    api.add_routes(app)
    return app


def relay_address(config: Config, worker: Worker) -> tuple[str, int, str | None]:
    """Where this process listens for relayed requests and the URL it registers: the
    configured ``[cluster] relay_listen`` and ``relay_advertise``; of ``--workers N``, worker
    ``i`` on the port plus ``i`` (each process has its own listener), unless the port is 0
    (any free one). Without ``relay_advertise``, the address bound."""
    host, port = config.relay_listen
    if port == 0:
        return host, 0, config.relay_advertise
    port += worker.index
    advertise = config.relay_advertise
    if advertise is not None and worker.index:
        parts = urlsplit(advertise)
        base = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        name = parts.hostname or ""
        name = f"[{name}]" if ":" in name else name
        advertise = urlunsplit(parts._replace(netloc=f"{name}:{base + worker.index}"))
    return host, port, advertise


def worker_asterisk(config: Config, worker: Worker) -> Config:
    """Each worker registers its own Stasis application, ``<app>-<index>`` when there are
    several (``ivr-0``, ``ivr-1``; the dialplan spreads calls over them, docs/asterisk.md):
    Asterisk gives one name to one websocket only, and the name is also what keeps each
    worker's bridge and channel ids apart (``ari.instance_tag``)."""
    if config.asterisk is None or worker.of == 1:
        return config
    named = dataclasses.replace(config.asterisk, app=f"{config.asterisk.app}-{worker.index}")
    return dataclasses.replace(config, asterisk=named)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


EXPIRY_INTERVAL_SECONDS = 60.0


async def _publish_head(publisher: HeadPublisher, why: str) -> None:
    """At start and shutdown: always, and a failure is logged, never fatal."""
    try:
        await asyncio.to_thread(publisher.publish, why, force=True)
    except Exception as exc:
        log.error("audit head (%s) could not be written to %s: %s", why, publisher.path, exc)


async def _expire_calls(registry: CallRegistry, health: LoopHealth | None = None) -> None:
    """Calls whose platform never said goodbye (a lost status callback) leave memory. A failed
    round is the health's (logged once, counted, /healthz); the next round comes anyway."""
    health = health or LoopHealth("call expiry")
    while True:
        await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
        try:
            expired = await registry.expire()
        except Exception as exc:
            health.round_failed(exc, "expiry round")
            continue
        health.round_ok()
        if expired:
            log.warning("%d call(s) had no word from their platform; forgotten", expired)


async def _keep_leadership(leadership: Leader, health: LoopHealth) -> None:
    """Take the background jobs when their holder is gone, and keep them (a lease is renewed
    here), every ``leadership.retry_seconds``; off the event loop (it may wait on the
    database)."""
    while True:
        try:
            await in_thread(leadership.claim)
        except Exception as exc:
            health.round_failed(exc, "leadership claim")
        else:
            health.round_ok()
        await asyncio.sleep(leadership.retry_seconds)


async def _recover_dead_holders(
    registry: CallRegistry,
    leadership: Leader,
    interval: float,
    health: LoopHealth,
    forget_after: float | None = None,
) -> None:
    """Of several processes on one vault, the one running the background jobs finishes what a
    process that died left open (its recordings, its calls' rows: ``recover_dead_holders``),
    within ``interval`` of its death (on a shared catalog: of its lease's expiry) rather than
    at the next start. ``forget_after``: dead processes' rows, once they hold nothing open, are
    removed that long after their lease expired."""
    while True:
        if leadership.held:
            await registry.recover_dead_holders(platforms=("twilio",))
            if forget_after is not None:
                await in_thread(registry.vault.catalog.forget_expired_processes, forget_after)
        health.round_ok()
        await asyncio.sleep(interval)


async def _retention_sweeper(
    vault: Vault,
    clock: Callable[[], datetime],
    interval: float,
    call_record_days: int,
    keys: KeySchedule | None = None,
    health: LoopHealth | None = None,
    leadership: Leader | None = None,
) -> None:
    """Storage limitation, enforced: purge what has outlived its retention period, on a
    schedule, from the moment the service starts; then the key schedule (rotate, re-wrap,
    retire), which is what makes an erasure reach backups of the catalog. Each round watches
    the breach register first (Art. 33's 72 hours). Of several processes on one vault, only
    the one holding ``leadership`` runs the rounds (ivr/leadership.py); the others try to take
    it every :data:`LEADERSHIP_RETRY_SECONDS` (or interval, if shorter). A step that fails is
    the health's (logged once with its traceback, counted, /healthz degraded until a round
    succeeds); the other steps still run and the loop carries on."""
    health = health or LoopHealth("retention sweeper")
    while True:
        if leadership is not None and not (leadership.held or await in_thread(leadership.claim)):
            health.round_ok()  # another process runs the jobs (ivr/leadership.py)
            await asyncio.sleep(min(interval, LEADERSHIP_RETRY_SECONDS))
            continue
        failed = False
        try:
            _warn_about_breaches(vault, clock())
        except Exception as exc:
            health.round_failed(exc, "breach watch")
            failed = True
        try:
            report = await in_thread(
                lifecycle.sweep,
                vault,
                now=clock(),
                dry_run=False,
                actor="system:retention",
                call_record_days=call_record_days,
            )
            if report.purged or report.held:
                log.info(
                    "retention sweep: purged %d recording(s), %d held back",
                    len(report.purged),
                    len(report.held),
                )
        except Exception as exc:
            health.round_failed(exc, "retention sweep")
            failed = True
        if keys is not None and keys.active:
            try:
                steps = await in_thread(run_schedule, vault, keys, now=clock())
                for step in steps:
                    if step.changed:
                        log.info(
                            "key schedule, tenant %s: rotated to %s, %d key(s) re-wrapped, "
                            "retired %s",
                            step.tenant,
                            step.rotated_to if step.rotated_to is not None else "-",
                            step.rewrapped,
                            ", ".join(map(str, step.retired)) or "-",
                        )
            except Exception as exc:
                health.round_failed(exc, "key schedule")
                failed = True
        if not failed:
            health.round_ok()
        await asyncio.sleep(interval)


def _file_sha256(path: Path | None) -> str | None:
    """Which configuration was in force, exactly: the audit log can be matched to a file."""
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _warn_about_breaches(vault: Vault, now: datetime) -> None:
    """Art. 33: the 72 hours run whether or not anyone looks at the register."""
    for b in breach.all_breaches(vault):
        state = breach.urgency(b, now)
        if state in ("overdue", "nearly due"):
            hours = breach.time_left(b, now).total_seconds() / 3600
            log.warning(
                "breach %s is %s: the supervisory authority must be notified by %s (%.1f h %s)",
                b["id"],
                state,
                b["deadline"],
                abs(hours),
                "left" if hours > 0 else "ago",
            )


async def healthz(request: web.Request) -> web.Response:
    """The service's state: ``ok``, ``degraded`` (``problems`` says why, in words) or
    ``stopping``. Each part answers for itself: the catalog (read here), every background loop
    (``loops``), the Asterisk application (``asterisk``). Fields: docs/healthz.md."""
    vault = request.app[VAULT]
    twilio = request.app[TWILIO]
    problems: list[str] = []
    body: dict[str, object] = {}
    now = request.app[CLOCK]()
    in_progress: int | None = None
    try:
        in_progress = await asyncio.to_thread(
            lambda: len(vault.list(status=RecordingStatus.RECORDING))
        )
        breaches = await asyncio.to_thread(breach.all_breaches, vault)
    except Exception as exc:  # the catalog cannot be read: say so, do not answer 500
        body["catalog"] = {"ok": False, "error": describe(exc)}
        problems.append(f"catalog failing: {describe(exc)}")
    else:
        body["catalog"] = {"ok": True, "error": None}
        pressing = [
            {"id": b["id"], "urgency": breach.urgency(b, now), "deadline": b["deadline"]}
            for b in breaches
            if breach.urgency(b, now) in ("overdue", "nearly due")
        ]
        if pressing:
            body["breaches"] = pressing
    pending = vault.pending
    body["disk"] = {
        "ok": not pending.failing,
        "error": pending.last_error if pending.failing else None,
        "writes_waiting": len(pending),
        "writes_kept": pending.deferred,
        "writes_made_late": pending.written_late,
        "writes_dropped": pending.dropped,
    }
    if pending.failing:
        problems.append(
            f"the catalog cannot be written (disk full?): {pending.last_error}; "
            f"{len(pending)} write(s) kept for later, calls go on unrecorded"
        )
    guard = request.app.get(serving.CONNECTIONS)
    if guard is not None:  # served by ivr.serving (not under a test server)
        body["connections"] = {
            "open": len(guard.open),
            "waiting": guard.waiting,
            "max": guard.max_connections,
            "counters": dict(sorted(guard.counters.items())),
        }
    loops = request.app[LOOPS]
    body["loops"] = {name: health.report() for name, health in sorted(loops.items())}
    leadership = request.app.get(LEADERSHIP)
    if leadership is not None:  # of the processes on this vault, whether this one runs them
        body["background_jobs"] = {"runs_here": leadership.held}
    worker = request.app[WORKER]
    body["worker"] = {
        "index": worker.index,
        "of": worker.of,
        "pid": os.getpid(),
        "all_workers_cpu_seconds": rounded(all_workers_cpu_seconds(worker, cpu_seconds())),
    }
    problems.extend(p for health in loops.values() if (p := health.problem) is not None)
    ari_app = request.app.get(ARI)
    if ari_app is not None:
        problem = ari_app.problem
        body["asterisk"] = {
            "ok": problem is None,
            "problem": problem,
            "connected": ari_app.connected,
            "application_replaced": ari_app.replaced,
            "connections": ari_app.connections,
            "events_loop": ari_app.events_loop.report(),
            "calls_in_progress": len(ari_app.calls),
            "counters": dict(sorted(ari_app.counters.items())),
        }
        if problem is not None:
            problems.append(f"asterisk: {problem}")
    status = "stopping" if not twilio.accepting else "degraded" if problems else "ok"
    return web.json_response(
        body
        | {
            "status": status,
            "problems": problems,
            "version": __version__,
            "calls_in_progress": len(twilio.calls.calls("twilio")),
            "open_recordings": len(vault.open_recordings),
            "recordings_in_progress": in_progress,
            "counters": dict(sorted(twilio.counters.items())),
            "cpu_seconds": round(cpu_seconds(), 3),
            "event_loop": event_loop_name(),
            "hot_path": "compiled" if hotpath.status().compiled else "source",
            "collector": collector_pauses.PAUSES.report(),
        }
    )


def event_loop_name() -> str:
    """The running event loop: ``uvloop`` or ``asyncio`` (``ivr serve --loop``)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; call ids travel inside the message, never phone numbers.
    ``worker``: the worker's index, on every line, when there are several."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The per-message path makes only short-lived objects; the default collector threshold
# (700 allocations) would run a collection hundreds of times a second under load. Not much
# higher than this, though: a collection stops every call for as long as it walks what was made
# since the last: at 500 Twilio calls the longest took 25 to 50 ms at 50,000, none over 25 at
# 10,000, for the same time paused in all and the same CPU (README, Performance).
GC_THRESHOLDS = (10_000, 50, 100)


def serve(
    *,
    config: Config,
    data_dir: Path,
    host: str,
    port: int,
    json_logs: bool = False,
    worker: Worker = ALONE,
    supervisor_fd: int | None = None,
    event_loop: str = "auto",
) -> None:
    """Run the service in this process until SIGINT or SIGTERM. ``worker`` and
    ``supervisor_fd``: this process is one of ``ivr serve --workers N``'s (ivr/workers.py); it
    listens on the shared port, says so on ``supervisor_fd`` and stops when that closes.
    ``event_loop``: ``auto``, ``asyncio`` or ``uvloop`` (ivr/serving.py ``loop_factory``)."""
    several = worker.of > 1
    if json_logs:
        json_handler = logging.StreamHandler(sys.stderr)
        json_handler.setFormatter(JsonLogFormatter(worker.index if several else None))
        logging.getLogger().handlers[:] = [json_handler]
    elif several:  # the workers share the supervisor's stderr: say whose line each is
        tag = f"[worker {worker.index}] %(name)s"
        tagged = logging.Formatter(TEXT_LOG_FORMAT.replace("%(name)s", tag))
        for handler in logging.getLogger().handlers:
            handler.setFormatter(tagged)
    # Objects alive at start-up (modules, configuration, prompts) are moved out of the
    # collector's way for good.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    collector_pauses.watch()
    serving.limit_malloc_arenas()

    loop_name, _ = serving.loop_factory(event_loop)

    def listening(bound: int) -> None:
        if several:
            log.info(
                "worker %d of %d (pid %d) listening on http://%s:%d",
                worker.index,
                worker.of,
                os.getpid(),
                host,
                bound,
            )
        else:
            log.info(
                "listening on http://%s:%d (event loop: %s; hot path: %s)",
                host,
                bound,
                loop_name,
                hotpath.status().why,
            )
        if supervisor_fd is not None:
            announce_ready(supervisor_fd)

    # Connections, slow clients and descriptors bounded (ivr/serving.py); SIGINT/SIGTERM is a
    # graceful stop that runs the shutdown hooks and the cleanup contexts.
    serving.run(
        create_app(config, data_dir, worker=worker),
        host=host,
        port=port,
        limits=config.limits,
        on_listening=listening,
        reuse_port=several,
        stop_when=(
            None
            if supervisor_fd is None
            else lambda loop, stop: watch_supervisor(supervisor_fd, loop, stop)
        ),
        event_loop=event_loop,
    )
