"""Several service processes on one catalog: a call's requests reach the process that holds it.

A call is held by the process that answered it: its session (the consent flow, the open
recording) lives there and nowhere else. The catalog names the holder (``calls.owner``: that
process's vault writer id) and where it takes relayed requests (``processes.relay_url``: a
listener every process starts, on the loopback interface unless ``[cluster] relay_listen`` puts
it on one the other nodes reach). A process that receives a
request for a call it does not hold (workers share one port, and the kernel spreads
connections over them) passes it on to the holder unchanged, a webhook as one HTTP request, a
media stream message by message in both directions, and returns the holder's answer.

The holder checks a relayed request as it checks any: the webhook's signature over the public
URL (the original scheme and host travel in ``X-Forwarded-Proto`` and ``X-Forwarded-Host``,
which only the relay listener believes), the stream's token. The listener itself takes only
requests another process of the service sent: each carries ``X-Ivr-Relay``, an HMAC keyed from
the master key over the time, method, path and the platform's signature (``RelayAuth``), so
that on a network interface nobody else reaches the routes behind it, nor makes it believe a
forwarded origin. Websocket pings are relayed too
and answered by the holder, so a pong still means "everything before the ping was acted on"
(the simulator's fast mode relies on it).

A holder that died holds nothing any more (its writer lock is free, or on another machine its
lease has lapsed: ``Vault.writer_alive``); the platform then answers from the catalog what can
be answered without the call's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from ivr.access_log import AccessLog
from ivr.log_limits import Warnings
from storage.files import utc_iso
from storage.vault import Vault

log = logging.getLogger(__name__)

RELAY_HOST = "127.0.0.1"  # the default: processes on one machine
RELAY_TIMEOUT_SECONDS = 10.0
AUTH_HEADER = "X-Ivr-Relay"
# How far the sender's clock may be from the listener's (an NTP-kept cluster is well within it),
# which is also how long a captured header could be replayed for the same path.
AUTH_WINDOW_SECONDS = 300
SIGNATURE_HEADER = "X-Twilio-Signature"
FORWARDED_PROTO, FORWARDED_HOST = "X-Forwarded-Proto", "X-Forwarded-Host"
# Request headers a relayed webhook keeps (the signature, what the body is); others are the
# hop's own.
KEPT_HEADERS = ("X-Twilio-Signature", "Content-Type", "User-Agent")
UNREACHABLE = "the process holding the call is unreachable"
CLOSE_UNREACHABLE = 1011  # websocket close code: an error on the server's side


RELAY_BODY = web.RequestKey("relay_body", bytes)  # a webhook's body as read, to pass on


class RelayAuth:
    """The header that says a relayed request comes from a process of this service: ``<unix
    time>:<HMAC-SHA256 hex>`` over the time, the method, the path with its query and the
    platform's signature header (which covers the body; the holder checks it again). Keyed
    with a service key derived from the master key, which every node holds."""

    def __init__(self, key: bytes, *, wall: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("a relay key needs at least 16 bytes")
        self._key = key
        self._wall = wall

    def _mac(self, stamp: str, method: str, path_qs: str, signature: str) -> str:
        text = "\n".join(("ivr relay v1", stamp, method.upper(), path_qs, signature))
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def header(self, method: str, path_qs: str, signature: str = "") -> str:
        stamp = str(int(self._wall()))
        return f"{stamp}:{self._mac(stamp, method, path_qs, signature)}"

    def check(self, value: str | None, method: str, path_qs: str, signature: str = "") -> bool:
        if not value or value.count(":") != 1:
            return False
        stamp, mac = value.split(":")
        if not stamp.isdigit() or len(stamp) > 12:
            return False
        if abs(self._wall() - int(stamp)) > AUTH_WINDOW_SECONDS:
            return False
        return hmac.compare_digest(mac, self._mac(stamp, method, path_qs, signature))


class HeldElsewhere(Exception):
    """A handler found its call held by another live process: ``pass_on_held`` (a
    middleware) passes the request on to it. ``url`` None: that process registered no relay
    address (yet), so it cannot be reached."""

    def __init__(self, url: str | None) -> None:
        super().__init__(url)
        self.url = url


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a call this process does not: whether that process is ``alive``, where it
    takes relayed requests (``relay_url``, None if it registered none), whether the call
    ``ended``, and the call's catalog ``row``."""

    call_id: str
    alive: bool
    relay_url: str | None
    ended: bool
    row: Mapping[str, Any]


class Relay:
    """Finds a call's holder and passes requests to it."""

    def __init__(self, vault: Vault, counters: Counter[str], auth: RelayAuth) -> None:
        self.vault = vault
        self.auth = auth
        self.writer_id = vault.writer_id
        self.url: str | None = None  # this process's relay listener, once listening
        # webhooks_relayed, streams_relayed, relay_failures: the platform's counters, which
        # /healthz and /metrics serve
        self.counters = counters
        self.warnings = Warnings(log)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # -- the listener --------------------------------------------------------------------------
    async def listen(
        self,
        setup: Callable[[web.Application], None],
        *,
        host: str = RELAY_HOST,
        port: int = 0,
        advertise: str | None = None,
    ) -> None:
        """Listen for relayed requests on ``host``:``port`` (0: any free port); ``setup`` adds
        the routes (and the state they need) to the listener's application. Registered in the
        catalog as ``advertise``, or as the address bound."""
        app = web.Application(middlewares=[_relayed_only, _forwarded_origin, pass_on_held])
        app[RELAY] = self
        setup(app)
        runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLog)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self.url = advertise or f"http://{bound_host}:{bound_port}"
        url, at, catalog = self.url, utc_iso(self.vault.clock()), self.vault.catalog
        if self.vault.lease is not None:  # a lease taken again keeps the address
            self.vault.lease.relay_url = url
        # Through the kept writes: a start on a full disk goes on, registered once it can be.
        await asyncio.to_thread(
            self.vault.pending.write,
            f"process {self.writer_id} relay registered",
            lambda db: catalog.register_process(db, self.writer_id, url, at),
            defer=True,
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=RELAY_TIMEOUT_SECONDS)
        )
        log.info("relay: taking other processes' requests for our calls at %s", self.url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(Exception):  # a closed or full catalog: the row is harmless
            await asyncio.to_thread(self.vault.catalog.forget_process, self.writer_id)

    # -- finding the holder --------------------------------------------------------------------
    async def holder(self, platform: str, platform_call_id: str) -> Holder | None:
        """The holder of a call this process does not hold in memory; None when the catalog
        knows no such call, or when it is this process's (a call it has finished)."""
        vault = self.vault

        def look() -> Holder | None:
            row = vault.catalog.call_of(platform, platform_call_id)
            if row is None or row["owner"] == self.writer_id:
                return None
            owner = row["owner"]
            alive = vault.writer_alive(owner)
            url = vault.catalog.relay_url(owner) if alive else None
            return Holder(row["id"], alive, url, row["ended_at"] is not None, dict(row))

        return await asyncio.to_thread(look)

    async def find(self, platform: str, platform_call_id: str) -> Holder | None:
        """For a call this process does not hold: raises ``HeldElsewhere`` when another live
        process holds it; the ``Holder`` when the process that held it died; None when
        nobody holds it."""
        holder = await self.holder(platform, platform_call_id)
        if holder is not None and holder.alive:
            raise HeldElsewhere(holder.relay_url)
        return holder

    # -- passing requests on ------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay is not listening")
        return self._session

    async def webhook(self, request: web.Request, url: str, body: bytes) -> web.Response:
        """Pass a webhook (its body already read and checked) to the holder at ``url``; its
        answer, as the holder gave it."""
        headers = {k: request.headers[k] for k in KEPT_HEADERS if k in request.headers}
        headers |= {FORWARDED_PROTO: request.scheme, FORWARDED_HOST: request.host}
        signature = request.headers.get(SIGNATURE_HEADER, "")
        headers[AUTH_HEADER] = self.auth.header(request.method, request.path_qs, signature)
        self.counters["webhooks_relayed"] += 1
        async with self._client().request(
            request.method,
            url + request.path_qs,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=RELAY_TIMEOUT_SECONDS),
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )

    async def stream(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        url: str | None,
        first: list[str],
        *,
        max_msg_size: int,
    ) -> None:
        """Pass a media stream to the holder at ``url``: the messages already read
        (``first``), then every message both ways, pings included, until either side closes;
        the holder's close code and reason reach the platform."""
        headers = {
            FORWARDED_PROTO: request.scheme,
            FORWARDED_HOST: request.host,
            AUTH_HEADER: self.auth.header(request.method, request.path_qs),
        }
        self.counters["streams_relayed"] += 1
        try:
            if url is None:
                raise aiohttp.InvalidURL("no relay address registered")
            await self._stream(ws, url + request.path_qs, headers, first, max_msg_size)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(f"{request.path}: relay to {url}", exc)
            if not ws.closed:
                await ws.close(code=CLOSE_UNREACHABLE, message=UNREACHABLE.encode())

    async def _stream(
        self,
        ws: web.WebSocketResponse,
        url: str,
        headers: Mapping[str, str],
        first: list[str],
        max_msg_size: int,
    ) -> None:
        async with self._client().ws_connect(
            url, headers=headers, autoping=False, max_msg_size=max_msg_size
        ) as holder:
            for text in first:
                await holder.send_str(text)
            up = asyncio.ensure_future(_pump(ws, holder.send_str, holder.ping, holder.pong))
            down = asyncio.ensure_future(_pump(holder, ws.send_str, ws.ping, ws.pong))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (up, down):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await task
            if down.done() and not ws.closed:  # the holder closed: say so with its code
                code = holder.close_code or 1000
                await ws.close(code=code, message=b"")
            elif not holder.closed:
                await holder.close(code=ws.close_code or 1000)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.counters["relay_failures"] += 1
        self.warnings.warn("relay-failed", "%s failed: %s", what, exc)


RELAY = web.AppKey("relay", Relay)


@web.middleware
async def pass_on_held(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A handler that raised ``HeldElsewhere`` (having read and checked the request, its body
    kept under ``RELAY_BODY``): the holder's answer, or 503 when it cannot be reached (Twilio
    then does what the number's fallback says)."""
    try:
        return await handler(request)
    except HeldElsewhere as held:
        relay = request.app[RELAY]
        try:
            if held.url is None:
                raise aiohttp.InvalidURL("no relay address registered")
            return await relay.webhook(request, held.url, request[RELAY_BODY])
        except (aiohttp.ClientError, TimeoutError) as exc:
            relay._failed(f"{request.path}: relay to {held.url}", exc)
            return web.Response(status=503, text=UNREACHABLE + "\n")


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    send: Callable[[str], Awaitable[None]],
    ping: Callable[[bytes], Awaitable[None]],
    pong: Callable[[bytes], Awaitable[None]],
) -> None:
    """Copy text messages, pings and pongs from ``source`` until it closes."""
    while True:
        msg = await source.receive()
        if msg.type == WSMsgType.TEXT:
            await send(msg.data)
        elif msg.type == WSMsgType.PING:
            await ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await pong(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        # Binary frames: Media Streams has none; not passed on.


@web.middleware
async def _relayed_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """On the relay listener only: a request another process of this service sent (it knows
    the master key), or 403 before anything else is read."""
    relay = request.app[RELAY]
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not relay.auth.check(
        request.headers.get(AUTH_HEADER), request.method, request.path_qs, signature
    ):
        relay.counters["relay_refused"] += 1
        relay.warnings.warn(
            "relay-refused",
            "relay listener: %s %s refused: not from a process of this service (no valid %s)",
            request.method,
            request.path,
            AUTH_HEADER,
        )
        return web.Response(status=403, text="not a relayed request\n")
    return await handler(request)


@web.middleware
async def _forwarded_origin(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """On the relay listener only: the request as the relaying process received it (scheme
    and host), so that the signature is checked over the URL the platform signed."""
    proto = request.headers.get(FORWARDED_PROTO)
    host = request.headers.get(FORWARDED_HOST)
    if proto in ("http", "https") and host:
        request = request.clone(scheme=proto, host=host)
    return await handler(request)
