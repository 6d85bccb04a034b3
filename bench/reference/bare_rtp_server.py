"""The bare RTP reference: the least an asyncio process can do to store RTP audio encrypted.

``python bench/reference/bare_rtp_server.py --ports LOW-HIGH`` binds one UDP socket on 127.0.0.1 per
port of the range (a port already in use is skipped), starts an HTTP server on a free loopback
port and prints ``ready <http-port> <sockets bound>`` once both listen.

Every datagram gets what any fair RTP recorder must do and nothing more: the sender's address
is checked against the first one the socket heard from (the peer), the 12-byte fixed header is
parsed (``struct.unpack_from``; version 2, the SSRC checked against the first one, CSRCs and a
header extension skipped, padding removed), the payload appended to the socket's buffer, and
about once per second of audio (8000 timestamp ticks) the buffer is sealed with AES-256-GCM (a
random 32-byte key per socket, STREAM-style nonce ``prefix ‖ counter ‖ last-flag``) and the
ciphertext dropped. No reordering, no jitter buffer, no DTMF, no consent logic, no file: what
the service does on top of this is what the load test measures. The sockets use the same event
loop machinery (``loop.create_datagram_endpoint``) and receive buffer (1 MiB) as the service's.

HTTP: ``GET /ports`` -> ``{"ports": [...]}``, the ports bound; ``GET /cpu`` ->
``{"cpu_seconds": user+sys of this process}``; ``GET /stats`` -> datagrams taken and refused,
payload bytes and sealed chunks so far. SIGTERM/SIGINT seal every buffer (last chunk flagged)
and exit.

``bench/calls.py --platform asterisk`` (``make bench-calls``) runs it as a subprocess for its
reference ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import gc
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_TICKS = 8000  # one second of 8 kHz audio in RTP timestamp units
RCVBUF_BYTES = 1 << 20  # as the service's RTP sockets
# Runtime settings are the same on both sides, so that the ratio compares the work done per
# packet: the collector's thresholds ``ivr serve`` sets (ivr/service.py GC_THRESHOLDS) and what
# one receive asks of the socket (ivr/calls/rtp.py DATAGRAM_BYTES), and at most two malloc arenas.
GC_THRESHOLDS = (10_000, 50, 100)
DATAGRAM_BYTES = 64 * 1024
_HEADER = struct.Struct("!BBHII")
_TS_MASK = 0xFFFFFFFF
_TS_HALF = 0x80000000
_STREAMS = web.AppKey("streams", list)


def parse_ports(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (or one port) -> (low, high); ValueError if it is not a valid range."""
    low_s, sep, high_s = text.partition("-")
    try:
        low = int(low_s)
        high = int(high_s) if sep else low
    except ValueError:
        raise ValueError(f"{text!r} is not a port range LOW-HIGH") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text!r} is not a port range within 1-65535")
    return low, high


def limit_malloc_arenas() -> None:
    """glibc's malloc arenas capped at two, as ``ivr serve`` does (ivr/serving.py
    ``limit_malloc_arenas``); nothing where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``ivr serve --loop`` runs on, for the same on both sides."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RtpSink(asyncio.DatagramProtocol):
    """One call's socket: its peer, SSRC, buffer and key (set at the first datagram)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.aead: AESGCM | None = None
        self.peer: tuple[str, int] | None = None
        self.ssrc = -1
        self.prefix = b""
        self.counter = 0
        self.buf = bytearray()
        self.seal_at = 0
        self.frames = 0
        self.refused = 0
        self.payload_bytes = 0
        self.chunks = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if hasattr(transport, "max_size"):
            transport.max_size = DATAGRAM_BYTES
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or (self.peer is not None and addr != self.peer):
            self.refused += 1
            return
        b0, _b1, _seq, ts, ssrc = _HEADER.unpack_from(data)
        start, end = 12 + 4 * (b0 & 0x0F), len(data)
        if b0 & 0x10 and end >= start + 4:  # a header extension: its length in 32-bit words
            start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
        if b0 & 0x20:
            end -= data[-1]
        if b0 >> 6 != 2 or start > end or (self.peer is not None and ssrc != self.ssrc):
            self.refused += 1
            return
        if self.peer is None:
            self._open(addr, ssrc, ts)
        elif (ts - self.seal_at) & _TS_MASK < _TS_HALF:  # ts >= seal_at, modulo 2**32
            if self.buf:
                self.seal(final=False)
            self.seal_at = (ts + SEAL_TICKS) & _TS_MASK
        self.buf += data[start:end]
        self.frames += 1

    def _open(self, peer: tuple[str, int], ssrc: int, ts: int) -> None:
        self.peer, self.ssrc = peer, ssrc
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.prefix = os.urandom(7)
        self.seal_at = (ts + SEAL_TICKS) & _TS_MASK

    def seal(self, final: bool) -> None:
        assert self.aead is not None
        nonce = self.prefix + self.counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        self.aead.encrypt(nonce, bytes(self.buf), None)
        self.payload_bytes += len(self.buf)
        self.buf.clear()
        self.counter += 1
        self.chunks += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.aead is not None:
            self.seal(final=True)
            self.aead = None


async def bind_range(low: int, high: int, host: str = "127.0.0.1") -> list[RtpSink]:
    """One socket per free port of ``low``-``high``; ports already in use are skipped."""
    loop = asyncio.get_running_loop()
    sinks: list[RtpSink] = []
    for port in range(low, high + 1):
        try:
            _, sink = await loop.create_datagram_endpoint(
                lambda p=port: RtpSink(p), local_addr=(host, port)
            )
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sinks.append(sink)
    return sinks


async def _ports(request: web.Request) -> web.Response:
    return web.json_response({"ports": [s.port for s in request.app[_STREAMS]]})


async def _cpu(request: web.Request) -> web.Response:
    return web.json_response({"cpu_seconds": round(cpu_seconds(), 4)})


async def _stats(request: web.Request) -> web.Response:
    sinks: list[RtpSink] = request.app[_STREAMS]
    return web.json_response(
        {
            "sockets": len(sinks),
            "streams": sum(1 for s in sinks if s.frames),
            "frames": sum(s.frames for s in sinks),
            "refused": sum(s.refused for s in sinks),
            "payload_bytes_sealed": sum(s.payload_bytes for s in sinks),
            "chunks": sum(s.chunks for s in sinks),
        }
    )


def create_app(sinks: list[RtpSink]) -> web.Application:
    app = web.Application()
    app[_STREAMS] = sinks
    app.router.add_get("/ports", _ports)
    app.router.add_get("/cpu", _cpu)
    app.router.add_get("/stats", _stats)
    return app


async def serve(low: int, high: int, http_port: int = 0) -> int:
    sinks = await bind_range(low, high)
    if not sinks:
        print(f"no port of {low}-{high} could be bound", file=sys.stderr, flush=True)
        return 1
    runner = web.AppRunner(create_app(sinks), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", http_port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else http_port
        print(f"ready {bound} {len(sinks)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sink in sinks:
            sink.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/reference/bare_rtp_server.py",
        description="Bare asyncio RTP receive+seal loop, one UDP socket per call (load-test "
        "reference for the Asterisk adapter).",
    )
    parser.add_argument(
        "--ports", required=True, help="UDP ports LOW-HIGH on 127.0.0.1, one per call"
    )
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: any free)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    try:
        low, high = parse_ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    limit_malloc_arenas()
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        return runner.run(serve(low, high, args.http_port))


if __name__ == "__main__":
    sys.exit(main())
