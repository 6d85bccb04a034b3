"""Handing a media stream's connection to the process that holds its call, on one machine.

The relay (ivr/calls/relay.py) passes a stream message by message to the process holding its
call: it works between machines, but the process the stream landed on reads and re-sends every
frame, so with the workers of ``ivr serve --workers N`` about half of all streams cost twice
(the kernel spreads connections over the workers at random). Between processes of one machine
the connection itself can move instead: the stream URLs the service gives Twilio name the
holder (``/twilio/stream/<kind>/<writer id>``), so the process a stream lands on knows the
holder from the request line alone, before it has answered anything. It then sends the
connection's socket to the holder over a Unix datagram socket (``SCM_RIGHTS``) with the request
head it read, and forgets the connection without writing to it; the holder adopts the socket as
if it had accepted it (``ConnectionGuard.adopt``) and reads the head as the connection's first
bytes. Twilio (any websocket client) sends nothing before the handshake's answer, so no byte of
the stream is read by the wrong process.

Each process listens at ``<HANDOVER_DIR>/<writer id>`` (a short path: Unix socket names are
limited to 108 bytes) in a directory of the process's user, mode 0700, so only processes of the
same user on this machine can hand it anything; it checks what it is handed (one TCP socket, a
head that is a stream request) as it would a new connection. When the holder has no such
listener (it runs on another machine, or it is gone) or the send fails, the stream is served
as before: checked, then relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

WRITER_ID = re.compile(r"[0-9a-f]{16}")  # storage.vault's writer ids: 8 random bytes, hex
MAX_HEAD_BYTES = 16 * 1024  # aiohttp's own limit on a request head is 8 KiB per field
STREAM_PATH = b"GET /twilio/stream/"


def handover_dir() -> Path:
    """Where this user's processes listen for handed-over connections."""
    return Path(tempfile.gettempdir()) / f"ivr-handover-{os.geteuid()}"


def _private_dir(path: Path) -> bool:
    """``path`` made if missing; whether it is a directory of ours that only we can use (not a
    symlink, nobody else's, mode 0700): else nothing is handed over through it."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    )


def request_head(request: web.Request) -> bytes:
    """The request line and headers as the client sent them (aiohttp keeps the raw headers)."""
    version = request.version
    line = f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}\r\n"
    headers = b"".join(name + b": " + value + b"\r\n" for name, value in request.raw_headers)
    return line.encode("latin-1") + headers + b"\r\n"


def hand_over(request: web.Request, holder: str, directory: Path | None = None) -> bool:
    """Send ``request``'s connection to process ``holder`` on this machine; True when it went
    (the connection is then no longer this process's: nothing may be written to it)."""
    if not WRITER_ID.fullmatch(holder):
        return False
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or transport.is_closing():
        return False
    head = request_head(request)
    if len(head) > MAX_HEAD_BYTES:
        return False
    path = (directory or handover_dir()) / holder
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.setblocking(False)
        try:
            out.connect(str(path))
            socket.send_fds(out, [head], [sock.fileno()])
        except OSError:  # no such listener, gone, or its queue is full: serve it here
            return False
    # The holder has its own descriptor for the connection now: dropping ours neither closes
    # nor resets it.
    transport.abort()
    return True


class HandoverListener:
    """Takes connections other processes of this machine hand over (``hand_over``) and gives
    each to ``adopt`` with its request head."""

    def __init__(
        self,
        writer_id: str,
        adopt: Callable[[socket.socket, bytes], Awaitable[bool]],
        counters: Counter[str],
        *,
        directory: Path | None = None,
    ) -> None:
        self.directory = directory or handover_dir()
        self.path = self.directory / writer_id
        self._adopt = adopt
        self._counters = counters
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> bool:
        """Listen; False (and streams are relayed to this process instead) where it cannot."""
        try:
            if not _private_dir(self.directory):
                log.warning("handover: %s is not a private directory of ours", self.directory)
                return False
            self.path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.path))
            sock.setblocking(False)
        except OSError as exc:
            log.warning("handover: cannot listen at %s: %s", self.path, exc)
            return False
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._ready)
        return True

    def _ready(self) -> None:
        assert self._sock is not None
        while True:
            try:
                head, fds, flags, _ = socket.recv_fds(self._sock, MAX_HEAD_BYTES, 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("handover: receive failed: %s", exc)
                return
            conn = self._accepted(head, fds, flags)
            if conn is None:
                self._counters["handovers_refused"] += 1
                continue
            task = asyncio.ensure_future(self._take(conn, head))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _accepted(self, head: bytes, fds: list[int], flags: int) -> socket.socket | None:
        """The one TCP socket handed over with a stream request's head, or None (every
        descriptor received closed)."""
        if (
            len(fds) != 1
            or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC)
            or not head.startswith(STREAM_PATH)
            or not head.endswith(b"\r\n\r\n")
        ):
            for fd in fds:
                os.close(fd)
            return None
        try:
            conn = socket.socket(fileno=fds[0])
        except OSError:  # not a socket at all (a file, a pipe)
            os.close(fds[0])
            return None
        if conn.family not in (socket.AF_INET, socket.AF_INET6) or conn.type != socket.SOCK_STREAM:
            conn.close()
            return None
        return conn

    async def _take(self, conn: socket.socket, head: bytes) -> None:
        try:
            taken = await self._adopt(conn, head)
        except OSError as exc:
            log.warning("handover: cannot adopt a connection: %s", exc)
            taken = False
        if taken:
            self._counters["streams_taken_over"] += 1
        else:
            conn.close()

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self.path.unlink(missing_ok=True)
