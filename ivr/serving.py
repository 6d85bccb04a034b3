"""How the service meets the network: bounded connections, deadlines for slow clients, and one
warning instead of a flood of tracebacks when descriptors run out.

Theory of operation. Every accepted connection passes through a :class:`ConnectionGuard`
before aiohttp sees it:

- **A cap on open connections** ([limits] max_connections; by default the descriptor limit less
  what recordings, RTP sockets and the catalog need, see :func:`connection_cap`), kept below
  the descriptor limit, so that ``accept()`` never fails with ``EMFILE`` and a recording can
  always open its file. At the cap, a new connection first makes room by closing the connection
  that has waited longest for a request (a slow or idle client: one that has not sent a whole
  request head, or sits idle between requests); connections in the middle of a request or
  carrying a media stream are never closed for room. When no connection is waiting, the new one
  is answered ``503`` and closed at once. So a flood of slow clients cannot keep ``/healthz``
  or a new call out: each newcomer displaces the oldest of them.
- **A deadline for the request head** ([limits] header_timeout_seconds): a connection that has
  not sent a request line and headers within it of opening is closed; after a response, the
  same time bounds the wait for the next request (aiohttp's keep-alive timeout), whether the
  client is idle or sends its head byte by byte.
- **A deadline for the body** ([limits] body_timeout_seconds): a request whose body is not all
  in within it of its head is answered ``408`` and its connection closed
  (:func:`body_deadline`, a middleware).
- **Refusals free their request at once**: an error answer raised as aiohttp's
  ``HTTPException`` is turned into a plain response by :func:`plain_errors`, the outermost
  middleware. Raised and caught by aiohttp itself, the exception would sit in a reference
  cycle with the handler's frames, and so keep the request and its buffered body (up to twice
  aiohttp's read buffer, 512 KiB) alive until the cyclic garbage collector runs, which
  ``ivr serve`` makes rare: a flood of oversized or forged webhooks held hundreds of
  megabytes that way.
- **Resource exhaustion is one warning**: the loop's exception handler turns "out of system
  resource" errors (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``; asyncio's accept loop
  reports one per failed ``accept()``) into one warning a minute with a count, not a traceback
  each; at the cap, evictions and refusals are likewise counted and warned about once a minute.

:func:`run` serves an application until SIGINT or SIGTERM, then stops as aiohttp's ``run_app``
does: stop listening, the shutdown hooks (open streams close, recordings are finalised), the
connections, the cleanup steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ivr.access_log import AccessLog
from ivr.config import Limits
from ivr.log_limits import Warnings

log = logging.getLogger(__name__)

# Descriptors kept for the process itself (catalog, log, event loop, listening socket, ARI,
# threads' files) and per call in progress (its recording file, its RTP socket).
BASE_DESCRIPTORS = 64
DESCRIPTORS_PER_CALL = 2
# The listening socket's backlog: connections the kernel holds until the loop accepts them.
# Calls arrive in bursts (Twilio opens a websocket per stream, the webhooks around them), and a
# busy loop accepts late: a full backlog drops connections, which the caller's side sees as a
# connect timeout (1,000 calls on one process lost dozens that way with 128). asyncio accepts
# up to a backlog's worth at once before any of them reaches the guard, and closed connections
# free their descriptors a moment later, so twice the backlog is kept free of the descriptor
# limit: it is a sixteenth of that limit, within these bounds (``accept_backlog``).
MIN_ACCEPT_BACKLOG = 128
MAX_ACCEPT_BACKLOG = 1024
MIN_CONNECTIONS = 16
# The descriptor limit is raised to its hard limit at start, but not beyond this.
MAX_DESCRIPTORS = 1 << 20
# After a 408, how long the rest of a slow body is read (so the client can see the answer).
LINGERING_SECONDS = 2.0
# What one read from a connection asks of the socket. asyncio's default (256 KiB) makes every
# read allocate a buffer above glibc's first threshold for mmap (128 KiB), and then an mmap and
# an munmap per read, unless something earlier freed a larger block and so raised it: about 15
# against 2.4 us per read on this project's machine. A media stream's reads are a few KiB.
READ_BYTES = 64 * 1024
# glibc gives each thread that allocates an arena of its own (up to eight per core), and what is
# freed in one is reused there only. `make bench-calls` at 500 Twilio calls, one run each: 81.7 KiB
# per live call as glibc likes, 67.9 with two arenas, 66.5 and 65.8 with one. The event loop's
# thread does nearly all the allocating (the other threads took under 2 % of the service's CPU
# in that load), so their sharing an arena cost no time the bench could see.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
SHUTDOWN_TIMEOUT_SECONDS = 30.0
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 25\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"too many open connections"
)


# --------------------------------------------------------------------------- descriptor budget


def raise_descriptor_limit() -> int:
    """Raise the soft descriptor limit to the hard one (at most :data:`MAX_DESCRIPTORS`): the
    service uses epoll, never select(), so the historical 1,024 default protects nothing. The
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d: %s", soft, exc)
            return soft
        log.info("descriptor limit raised from %d to %d", soft, wanted)
        return wanted
    return MAX_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (what ``MALLOC_ARENA_MAX`` in the environment
    would do, which stays in force if set); False where the C library is not glibc. Called
    before the service starts any thread."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return True
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # Only glibc has the arenas (and names itself with gnu_get_libc_version).
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def accept_backlog(descriptors: int) -> int:
    """The listening socket's backlog for a process allowed ``descriptors`` descriptors."""
    return max(MIN_ACCEPT_BACKLOG, min(MAX_ACCEPT_BACKLOG, descriptors // 16))


def connection_cap(limits: Limits, descriptors: int) -> tuple[int, str | None]:
    """How many connections to keep open at most, and a warning when the descriptor limit is
    too small for ``limits``: the descriptors left after the process's own and those of
    ``max_calls`` calls, unless ``max_connections`` says otherwise."""
    backlog = accept_backlog(descriptors)
    reserved = BASE_DESCRIPTORS + 2 * backlog + DESCRIPTORS_PER_CALL * limits.max_calls
    room = descriptors - reserved
    wanted = limits.max_connections
    cap = max(MIN_CONNECTIONS, room) if wanted is None else wanted
    if cap <= room:
        return cap, None
    return cap, (
        f"the descriptor limit ({descriptors}) leaves room for {max(room, 0)} connections "
        f"next to {limits.max_calls} calls ([limits] max_calls), fewer than the {cap} allowed; "
        f"under load, connections, recordings or RTP sockets may fail with 'Too many open "
        f"files'. Raise the limit (ulimit -n, systemd LimitNOFILE) or lower max_calls"
        + ("" if wanted is None else " or max_connections")
    )


# --------------------------------------------------------------------------- the connection guard


@dataclass(eq=False)
class ConnectionGuard:
    """The open connections, admitted, displaced or refused at the cap (module docstring)."""

    max_connections: int
    header_timeout: float
    counters: Counter[str] = field(default_factory=Counter)
    # In the order they opened: the first waiting one is the one that has waited longest.
    open: dict[_Guarded, None] = field(default_factory=dict)
    warnings: Warnings = field(default_factory=lambda: Warnings(log))  # ivr/log_limits.py
    # The listener's protocol factory, once it listens: connections another process hands
    # over (ivr/calls/handover.py) are served as if accepted here.
    factory: Callable[[], asyncio.Protocol] | None = None

    def protocols(self, handlers: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: aiohttp's handlers, guarded."""
        return lambda: _Guarded(self, handlers())

    async def adopt(self, sock: socket.socket, head: bytes) -> bool:
        """Serve ``sock``, a connection accepted by another process, whose request ``head``
        that process already read; False when this process does not listen (yet, or any
        more). Admitted, displacing or refused at the cap as any new connection."""
        if self.factory is None:
            return False
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.connect_accepted_socket(self.factory, sock)
        protocol.data_received(head)
        return True

    @property
    def waiting(self) -> int:
        return sum(1 for c in self.open if c.waiting)

    def _admit(self, conn: _Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            oldest = next((c for c in self.open if c.waiting), None)
            if oldest is None:
                self.counters["connections_refused"] += 1
                self.warnings.warn(
                    "full",
                    "%d connections open, all busy ([limits] max_connections): refusing new ones",
                    len(self.open),
                )
                return False
            self.counters["connections_displaced"] += 1
            self.warnings.warn(
                "full",  # one kind with the refusals: one line a minute at the cap, either way
                "%d connections open ([limits] max_connections): closing the longest-waiting "
                "idle or slow one for each new one",
                len(self.open),
            )
            oldest.close()
        self.open[conn] = None
        self.counters["connections"] += 1
        return True

    def _closed(self, conn: _Guarded) -> None:
        self.open.pop(conn, None)

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: running out of descriptors (or buffers, or memory) is
        counted and warned about once a minute; anything else goes to asyncio's default."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in EXHAUSTION_ERRNOS:
            self.counters["resource_errors"] += 1
            self.warnings.warn(
                "exhausted",
                "%s: %s (%d connections open); the service keeps serving and retries",
                context.get("message", "out of system resources"),
                exc.strerror or exc,
                len(self.open),
            )
            return
        loop.default_exception_handler(context)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's handler, with the head deadline and the guard's bookkeeping."""

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self.guard = guard
        self.handler = handler
        self.admitted = False
        self.closed = False
        self.head_timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        """Whether the connection waits for a request (none yet, or idle between two): those
        are the ones closed to make room."""
        if self.closed:
            return False
        if self.handler._request_count == 0:  # aiohttp has no public view of these
            return True
        waiter = self.handler._waiter
        return waiter is not None and not waiter.done()

    def close(self) -> None:
        self.closed = True
        self.guard._closed(self)
        self.handler.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard._admit(self):
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSAL)
            transport.close()
            return
        self.admitted = True
        if hasattr(transport, "max_size"):  # asyncio's selector transport (not uvloop's)
            transport.max_size = READ_BYTES
        self.handler.connection_made(transport)
        loop = asyncio.get_running_loop()
        self.head_timer = loop.call_later(self.guard.header_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        self.head_timer = None
        if self.handler._request_count == 0 and not self.closed:
            self.guard.counters["header_timeouts"] += 1
            log.debug(
                "a connection sent no request head in %g s; closed", self.guard.header_timeout
            )
            self.close()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        self.handler.data_received(data)
        if self.head_timer is not None and self.handler._request_count:
            self.head_timer.cancel()
            self.head_timer = None

    def eof_received(self) -> None:
        if self.admitted:
            self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.admitted:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.admitted:
            self.closed = True
            self.guard._closed(self)
            self.handler.connection_lost(exc)


# --------------------------------------------------------------------------- the body deadline


def body_deadline(seconds: float, counters: Counter[str]) -> Any:
    """A middleware: a request whose body is not all in within ``seconds`` of its head is
    answered 408 and its connection closed. Handlers are unchanged: the deadline cancels only a
    handler still waiting for the body."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = request.content
        if not request.body_exists or body.is_eof():
            return await handler(request)
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            if not body.is_eof():
                expired = True
                task.cancel()

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > 0:
                raise
            counters["body_timeouts"] += 1
            log.debug("%s %s: body not in within %g s; 408", request.method, request.path, seconds)
            raise web.HTTPRequestTimeout(
                text="request body too slow\n", headers={"Connection": "close"}
            ) from None
        finally:
            timer.cancel()

    return middleware


# --------------------------------------------------------------------------- request bodies


class BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"the body is {size} bytes or more")
        self.size = size  # as announced, or as far as it was read


class BodyRefused(Exception):
    """The body is not of the kind asked for, or could not be read; the message says which."""


async def read_body(request: web.Request, limit: int, *, content_type: str | None = None) -> bytes:
    """The request's body, refused (``BodyTooLarge``) over ``limit`` bytes before it is read,
    by its Content-Length, or as read: at most one byte more than ``limit`` is ever read, so a
    handler that reads a body before it can check who sent it (a webhook's signature covers
    its body) holds no more than that. ``BodyRefused`` when it is not ``content_type`` or
    breaks off (a truncated or malformed chunked body)."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(length)
    if content_type is not None and request.content_type != content_type:
        raise BodyRefused(f"the body is not {content_type}")
    body = bytearray()
    try:
        while len(body) <= limit:
            chunk = await request.content.read(limit + 1 - len(body))
            if not chunk:
                break
            body += chunk
    except (HttpProcessingError, ConnectionError):
        raise BodyRefused("the body could not be read") from None
    if len(body) > limit:
        raise BodyTooLarge(len(body))
    return bytes(body)


# --------------------------------------------------------------------------- error answers


@web.middleware
async def plain_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A middleware: an ``HTTPException`` raised below becomes an ordinary response with the
    same status, reason, headers and body (module docstring: refusals free their request)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        answer = web.Response(status=exc.status, reason=exc.reason, headers=exc.headers)
        answer.body = exc.body
        exc.__traceback__ = None  # whoever still holds the exception holds no frames
        return answer


# --------------------------------------------------------------------------- serving

CONNECTIONS = web.AppKey("connections", ConnectionGuard)


@dataclass
class Served:
    """A running listener: :meth:`stop` stops it as aiohttp's run_app would."""

    runner: web.AppRunner
    server: asyncio.Server
    guard: ConnectionGuard
    previous_handler: Any

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.guard.factory = None  # nor adopts any
        self.server.close()  # stop listening; open connections end in the runner's cleanup
        try:
            await self.runner.cleanup()
        finally:
            asyncio.get_running_loop().set_exception_handler(self.previous_handler)


async def start(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: Limits,
    descriptors: int | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS,
    reuse_port: bool = False,
) -> Served:
    """Start serving ``app`` on ``host``:``port`` (0: any free port) under ``limits``.
    ``descriptors``: the descriptor limit to plan for (default: the process's soft limit).
    ``reuse_port``: listen with ``SO_REUSEPORT``, next to the other workers (ivr/workers.py)."""
    if descriptors is None:
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap, warning = connection_cap(limits, descriptors)
    if warning:
        log.warning("%s", warning)
    guard = ConnectionGuard(max_connections=cap, header_timeout=limits.header_timeout_seconds)
    app[CONNECTIONS] = guard
    app.middlewares.append(body_deadline(limits.body_timeout_seconds, guard.counters))
    app.middlewares.insert(0, plain_errors)  # outermost: it sees every refusal
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(guard.exception_handler)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLog,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=limits.header_timeout_seconds,
        lingering_time=LINGERING_SECONDS,
    )
    try:
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        factory = guard.protocols(handlers)
        server = await loop.create_server(
            factory,
            host,
            port,
            backlog=accept_backlog(descriptors),
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except BaseException:
        await runner.cleanup()
        loop.set_exception_handler(previous)
        raise
    guard.factory = factory
    log.info(
        "at most %d connections, %d calls; request head within %g s, body within %g s",
        cap,
        limits.max_calls,
        limits.header_timeout_seconds,
        limits.body_timeout_seconds,
    )
    return Served(runner, server, guard, previous)


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop ``ivr serve --loop`` asks for: its name, and what makes one (None: the
    standard library's). ``auto`` is uvloop where it is installed (``pip install ivr[fast]``:
    its transports cost less per message), else asyncio. ValueError for uvloop without it."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop {choice!r}: expected one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("uvloop is not installed (pip install 'ivr[fast]')") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: Limits,
    on_listening: Callable[[int], None] = lambda port: None,
    reuse_port: bool = False,
    stop_when: Callable[[asyncio.AbstractEventLoop, Callable[[], None]], None] | None = None,
    event_loop: str = "auto",
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then stop gracefully (the module docstring).
    ``stop_when(loop, stop)``: arranges for another reason to stop the same way (a worker's
    supervisor gone, ivr/workers.py). ``event_loop``: see ``loop_factory``."""
    _, factory = loop_factory(event_loop)
    descriptors = raise_descriptor_limit()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if stop_when is not None:
            stop_when(loop, stop.set)
        served = await start(
            app,
            host=host,
            port=port,
            limits=limits,
            descriptors=descriptors,
            reuse_port=reuse_port,
        )
        try:
            on_listening(served.port)
            await stop.wait()
        finally:
            await served.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
