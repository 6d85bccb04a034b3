"""The harness's websocket client (RFC 6455) on asyncio streams: Twilio's side of a Media Stream.

Why not aiohttp's client: it builds, masks and writes every message on its own, which at tens
of thousands of messages per second makes the load generator the bottleneck. Here frames are
client-masked with the all-zero key, which RFC 6455 §5.3 permits (an unpredictable key stops a
browser script poisoning proxy caches, which does not apply to a test tool) and which makes
masking a no-op, so a frame is header ‖ payload and many pre-built frames go out in one
``write_raw``. ``ping`` is the handshake of virtual time (``twilio_wire.Inbox.sync``).
"""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import os
import ssl
import struct
from collections.abc import Mapping
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_MESSAGE = 16 * 1024 * 1024
_MAX_HANDSHAKE = 64 * 1024


class WebSocketError(Exception):
    """The handshake failed (``status``: the HTTP status, if any) or the peer broke the
    protocol."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _header(opcode: int, length: int) -> bytes:
    """A final frame's header, masked with the zero key."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + bytes(4)
    if length < 65536:
        return bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", length) + bytes(4)
    return bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", length) + bytes(4)


# Headers of text frames up to 4 KiB, precomputed: building a media frame is then one lookup.
_TEXT_HEADERS = tuple(_header(OP_TEXT, n) for n in range(4096))


def frame_header(length: int) -> bytes:
    """The header of a final text frame carrying ``length`` bytes."""
    return _TEXT_HEADERS[length] if length < 4096 else _header(OP_TEXT, length)


def text_frame(payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    return frame_header(len(payload)) + payload


class RawWebSocket:
    """One client connection. ``receive`` must not be called from two tasks at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.transport = writer.transport
        self.close_code: int | None = None  # the peer's close code, once it sent one
        self.close_reason = ""
        self._close_sent = False
        self.closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        via: str | None = None,
    ) -> RawWebSocket:
        """Open ``ws(s)://`` ``url`` and complete the upgrade; ``WebSocketError`` (``status``
        set when the server answered something other than 101), ``OSError`` or
        ``TimeoutError``. ``via``: connect to this ``ws(s)://host:port`` instead of the URL's
        own host, with the URL's Host header (as a load balancer passes it to a backend)."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise WebSocketError(f"only ws:// and wss:// URLs are supported, not {url!r}")
        node = urlsplit(via) if via else parts
        if node.scheme not in ("ws", "wss") or not node.hostname:
            raise WebSocketError(f"only ws:// and wss:// nodes are supported, not {via!r}")
        secure = node.scheme == "wss"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16))
        extra = {"User-Agent": "ivr-harness", **(headers or {})}
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            + "\r\n"
        ).encode()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                node.hostname,
                node.port or (443 if secure else 80),
                limit=_MAX_HANDSHAKE,
                ssl=ssl.create_default_context() if secure else None,
            )
            try:
                writer.write(request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    raise WebSocketError(f"{url}: no complete HTTP response ({exc})") from None
                status_line, _, rest = head.decode("latin-1").partition("\r\n")
                answer = email.message_from_string(rest)  # as http.client reads headers
                status = status_line.split(" ", 2)[1:2]
                if status != ["101"]:
                    raise WebSocketError(
                        f"{url}: upgrade refused: {status_line}",
                        status=int(status[0]) if status and status[0].isdigit() else 0,
                    )
                expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
                if answer.get("sec-websocket-accept") != expected:
                    raise WebSocketError(f"{url}: bad Sec-WebSocket-Accept")
                if str(answer.get("upgrade", "")).lower() != "websocket":
                    raise WebSocketError(f"{url}: response is not a websocket upgrade")
            except BaseException:
                writer.close()
                raise
        return cls(reader, writer)

    # -- sending ---------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return not self._close_sent and not self.transport.is_closing()

    def write_raw(self, frames: bytes) -> None:
        """Write pre-built frames (e.g. many ``text_frame``s joined) in one ``write``."""
        if not self.writable:
            raise ConnectionResetError("websocket is closed")
        self.transport.write(frames)

    def send_text(self, payload: bytes | str) -> None:
        self.write_raw(text_frame(payload))

    def ping(self, payload: bytes) -> None:
        """Its pong comes back from ``receive`` as ``(OP_PONG, payload)``."""
        self.write_raw(_header(OP_PING, len(payload)) + payload)

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    # -- receiving -------------------------------------------------------------------------
    async def receive(self) -> tuple[int, bytes]:
        """The next message as (opcode, payload): OP_TEXT, OP_BINARY, OP_PONG or OP_CLOSE.

        Pings are answered. On OP_CLOSE the payload is the close body; the close is answered
        and the connection shut, after which every call returns OP_CLOSE. Raises
        ``asyncio.IncompleteReadError``/``ConnectionError`` if the connection drops.
        """
        if self.closed:
            return OP_CLOSE, b""
        reader = self._reader
        message_op: int | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            b0, b1 = await reader.readexactly(2)
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b1 & 0x80:
                raise WebSocketError("the server masked a frame")  # RFC 6455 §5.1
            if length == 126:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", await reader.readexactly(8))
            data = await reader.readexactly(length) if length else b""
            if opcode >= 0x8:  # control frames may arrive between fragments
                if opcode == OP_CLOSE:
                    return OP_CLOSE, self._closed_by_peer(data)
                if opcode == OP_PONG:
                    return OP_PONG, data
                if opcode == OP_PING and self.writable:
                    self.transport.write(_header(OP_PONG, len(data)) + data)
                continue
            if (opcode == OP_CONT) != (message_op is not None):
                raise WebSocketError("fragments out of order")
            message_op = message_op if message_op is not None else opcode
            size += len(data)
            if size > _MAX_MESSAGE:
                raise WebSocketError("message too large")
            parts.append(data)
            if fin:
                return message_op, parts[0] if len(parts) == 1 else b"".join(parts)

    def _closed_by_peer(self, body: bytes) -> bytes:
        if len(body) >= 2:
            (self.close_code,) = struct.unpack(">H", body[:2])
            self.close_reason = body[2:].decode(errors="replace")
        else:
            self.close_code = 1005  # no status received
        self._send_close(self.close_code if len(body) >= 2 else 1000)
        self._shutdown()
        return body

    # -- closing ---------------------------------------------------------------------------
    async def close(self, code: int = 1000, *, timeout: float = 5.0) -> None:
        """Send a close frame, wait (bounded) for the peer's, then shut the connection."""
        if self.closed:
            return
        try:
            self._send_close(code)
            async with asyncio.timeout(timeout):
                while (await self.receive())[0] != OP_CLOSE:
                    pass
        except (TimeoutError, OSError, asyncio.IncompleteReadError, WebSocketError):
            pass
        finally:
            self._shutdown()

    def _send_close(self, code: int) -> None:
        if self.writable:
            self.transport.write(_header(OP_CLOSE, 2) + struct.pack(">H", code))
            self._close_sent = True

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self._close_sent = self.closed = True
        self.transport.abort()

    def _shutdown(self) -> None:
        self.closed = True
        if not self.transport.is_closing():
            self._writer.close()
