"""The fake Asterisk's REST and events: an aiohttp server speaking ARI, and the driver's API.

Requests are checked the way Asterisk checks them and answered with its statuses and messages;
what they change is done by ``model.Pbx``, whose events go out on the app's events websocket
in order (one queue, one writer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import WSMsgType, web

from ivr.harness import audio as harness_audio
from ivr.harness.fake_asterisk.call import FakeCall
from ivr.harness.fake_asterisk.model import (
    AGENT,
    CALLER,
    EXTERNAL_MEDIA,
    AriError,
    BridgeState,
    ChannelState,
    FrameSource,
    Pbx,
)
from ivr.harness.fake_asterisk.rtp import RtpPeer, parse_addr

log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The ``DELETE /channels/{id}?reason=`` names the service sends, with Asterisk's causes
# (resource_channels.c convert_reason_to_hangup_code); other names are refused.
_HANGUP_REASONS = {"normal": 16, "congestion": 34, "unallocated": 1}
_BRIDGE_TYPES = {"mixing", "holding", "dtmf_events", "proxy_media"}  # (video types: never sent)
# Some format names Asterisk knows (400 for others); the fake streams only ulaw (501).
_KNOWN_FORMATS = {"ulaw", "alaw", "gsm", "g722", "g729", "opus", "slin", "slin16", "slin48"}
_PINGS = itertools.count(1)
_POLL_SECONDS = 0.002  # how often ``wait_for`` looks


@dataclass
class RecordedRequest:
    """One HTTP request the fake received (``status`` is filled in once answered; for an events
    websocket, 101 once it has closed)."""

    method: str
    path: str
    query: dict[str, str]  # repeated parameters joined with ","
    auth_ok: bool
    status: int | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass(eq=False)
class _EventSocket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    app: str
    pongs: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)


def _get(request: web.Request, name: str) -> str | None:
    return request.query.get(name) or None


def _need(request: web.Request, name: str, message: str) -> str:
    """The parameter, or a 400 with Asterisk's ``message`` for its absence."""
    value = _get(request, name)
    if value is None:
        raise AriError(400, message)
    return value


def _getall(request: web.Request, name: str) -> list[str]:
    """A list parameter, given repeated or comma-separated."""
    return [v for value in request.query.getall(name, ()) for v in value.split(",") if v]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


class FakeAsterisk:
    """A fake Asterisk 22 ARI server plus RTP peers. See the package docstring.

    ``auto_answer_agents``: originated
    channels answer at once (else they ring until :meth:`answer_agent` or :meth:`reject_agent`,
    which also plays a ring timeout: cause 19). ``media_stasis_delay``: seconds between the
    answer to ``POST /channels/externalMedia`` and the new channel's ``StasisStart`` (real
    Asterisk mostly answers first and puts the channel in the app a little later; until then
    ``addChannel`` refuses it with 422); None: never. ``media_stasis_before_reply``: the
    channel's ``StasisStart`` is sent before the answer instead, which Asterisk does now and
    then (its HTTP thread and the thread putting the channel in the app race). ``seed`` makes
    ids, SSRCs and initial sequence numbers and timestamps reproducible.
    """

    def __init__(
        self,
        *,
        app: str = "consent",
        username: str = "asterisk",
        password: str = "asterisk",
        host: str = "127.0.0.1",
        port: int = 0,
        caller_audio: FrameSource | None = None,
        agent_audio: FrameSource | None = None,
        auto_answer_agents: bool = True,
        media_stasis_delay: float | None = 0.005,
        media_stasis_before_reply: bool = False,
        seed: int = 0,
    ) -> None:
        self.app = app
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.caller_audio: FrameSource = caller_audio or harness_audio.tone(440.0, -12.0)
        self.agent_audio: FrameSource = agent_audio or harness_audio.tone(660.0, -12.0)
        self.auto_answer_agents = auto_answer_agents
        self.media_stasis_delay = media_stasis_delay
        self.media_stasis_before_reply = media_stasis_before_reply
        self.pbx = Pbx(app=app, seed=seed, emit=self._emit)
        self.channels: dict[str, ChannelState] = self.pbx.channels
        self.bridges: dict[str, BridgeState] = self.pbx.bridges
        self.calls: dict[str, FakeCall] = {}  # caller channel id -> call
        self.requests: list[RecordedRequest] = []
        self.observers: list[Callable[[RecordedRequest], None]] = []  # told of each answer
        self.rejected = 0  # requests answered with a 4xx/5xx
        self.raw_sent = 0  # texts sent by ``send_raw``
        self._failures: list[tuple[str, re.Pattern[str], int, str]] = []
        self._refusing = False
        self._sockets: list[_EventSocket] = []  # every open events socket
        self._app_sockets: dict[str, _EventSocket] = {}  # the newest for each app
        # An event, or a raw text from ``send_raw``, for a socket.
        self._outbox: asyncio.Queue[tuple[_EventSocket, dict[str, Any] | str]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving; ``port`` is then the real port."""
        if self._runner is not None:
            raise RuntimeError("already started")
        self._spawn(self._pump())
        app = web.Application(middlewares=[self._dispatch])
        # Only what the service asks of Asterisk (ivr/platforms/asterisk/ari.py), and events.
        for method, path, handler in (
            ("GET", "/events", self._h_events),
            ("GET", "/channels", self._h_channels_list),
            ("POST", "/channels", self._h_originate),
            ("POST", "/channels/externalMedia", self._h_external_media),
            ("GET", "/channels/{id}", self._h_channel_get),
            ("DELETE", "/channels/{id}", self._h_hangup),
            ("POST", "/channels/{id}/answer", self._h_answer),
            ("POST", "/channels/{id}/continue", self._h_continue),
            ("POST", "/channels/{id}/variable", self._h_variable_set),
            ("GET", "/bridges", self._h_bridges_list),
            ("POST", "/bridges", self._h_bridge_create),
            ("DELETE", "/bridges/{id}", self._h_bridge_destroy),
            ("POST", "/bridges/{id}/addChannel", self._h_add_channel),
        ):
            app.router.add_route(method, f"/ari{path}", handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every socket and stop serving. Safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        for ch in self.channels.values():
            if ch.rtp is not None:
                ch.rtp.close()
        for sock in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(code=1001, message=b"shutdown"), 0.5)
            if sock.transport is not None:
                sock.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FakeAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """ARI base URL, e.g. ``http://127.0.0.1:PORT/ari`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}/ari"

    @property
    def events_url(self) -> str:
        """The events websocket URL for ``app`` (without credentials)."""
        return f"ws://{self.host}:{self.port}/ari/events?app={self.app}"

    # -- failure injection -------------------------------------------------------------------
    async def drop_events_socket(self) -> int:
        """Close every events websocket abruptly (TCP abort); returns how many were dropped.
        Events emitted afterwards are lost until the app reconnects."""
        dropped = list(self._sockets)
        for sock in dropped:
            self._unregister(sock)
            if sock.transport is not None:
                sock.transport.abort()
        await asyncio.sleep(0)
        return len(dropped)

    def send_raw(self, text: str, app: str | None = None) -> bool:
        """Put ``text`` on ``app``'s events socket as one websocket text message, as it is
        (malformed JSON, a hostile event): in order with the events. False when nobody
        listens (the text is then dropped and not counted)."""
        sock = self.listener(app)
        if sock is not None:
            self._outbox.put_nowait((sock, text))
        return sock is not None

    def refuse_connections(self, refuse: bool = True) -> None:
        """While True, ``GET /ari/events`` answers 503 (open sockets stay open)."""
        self._refusing = refuse

    def fail_next(
        self, method: str, path_regex: str, status: int, message: str | None = None
    ) -> None:
        """Make the next request matching ``method`` (or ``*``) and ``path_regex`` fail.

        ``path_regex`` is searched in the full path (``/ari/channels/1.2/answer``). The failed
        request has no effect. Several may be queued; each fires once. The message defaults to
        the status's reason phrase.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        text = message or HTTPStatus(status).phrase
        self._failures.append((method.upper(), re.compile(path_regex), status, text))

    # -- driving calls -----------------------------------------------------------------------
    async def place_call(
        self,
        exten: str,
        caller: str,
        *,
        args: Sequence[str] = (),
        channel_vars: Mapping[str, str] | None = None,
        app: str | None = None,
        channel_id: str | None = None,
    ) -> FakeCall:
        """A call to ``exten`` from ``caller`` reaches ``Stasis(app[,args])``: ``StasisStart``.
        Its channel is in state ``Ring`` until the app answers."""
        if self._runner is None:
            raise RuntimeError("FakeAsterisk is not started")
        cid = channel_id or self.pbx.new_channel_id()
        if cid in self.channels:
            raise ValueError(f"channel id {cid} exists")
        ch = self.pbx.add(
            ChannelState(
                id=cid,
                name=f"PJSIP/caller-{self.pbx.new_name_seq()}",
                kind=CALLER,
                app=app or self.app,
                state="Ring",
                caller_number=caller,
                exten=exten,
                vars={str(k): str(v) for k, v in (channel_vars or {}).items()},
                args=list(args),
                audio=self.caller_audio,
            )
        )
        call = self.calls[cid] = FakeCall(self, ch)
        self.pbx.enter_stasis(ch)
        await self.flush_events()
        return call

    async def answer_agent(self, channel_id: str) -> None:
        """An originated (ringing) channel answers: it enters Stasis (``StasisStart``)."""
        self.pbx.agent_answers(self._ringing_agent(channel_id))
        await self.flush_events()

    async def reject_agent(self, channel_id: str, cause: int = 21) -> None:
        """An originated (ringing) channel is refused: ``ChannelDestroyed`` with ``cause``."""
        self.pbx.terminate(self._ringing_agent(channel_id), cause, order=("ChannelDestroyed",))
        await self.flush_events()

    def _ringing_agent(self, channel_id: str) -> ChannelState:
        ch = self.pbx.live(channel_id)
        if ch is None or ch.kind != AGENT or ch.answered:
            raise RuntimeError(f"{channel_id} is not a ringing originated channel")
        return ch

    # -- waiting -----------------------------------------------------------------------------
    async def flush_events(self) -> None:
        """Wait until every emitted event has been written to its socket (or lost)."""
        await self._outbox.join()

    async def sync(self, app: str | None = None, timeout: float = 10.0) -> None:
        """Wait until the app has read every event sent so far: a websocket ping after them,
        answered when its reader gets there (the handshake ``ivr simulate --platform asterisk
        --fast`` moves its clock by). Returns at once if nobody listens."""
        await self.flush_events()
        sock = self.listener(app)
        if sock is None:
            return
        token = b"sync-%d" % next(_PINGS)
        pong = sock.pongs[token] = asyncio.get_running_loop().create_future()
        try:
            await sock.ws.ping(token)
            async with asyncio.timeout(timeout):
                await pong
        except (ConnectionError, RuntimeError):
            return  # the socket went away: nobody is there to wait for
        finally:
            sock.pongs.pop(token, None)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds (looked at every 2 ms). Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                raise TimeoutError(f"fake asterisk: timed out waiting for {what}")
            await asyncio.sleep(_POLL_SECONDS)

    async def wait_connected(self, app: str | None = None, timeout: float = 5.0) -> None:
        """Wait until an events websocket is open for ``app``; TimeoutError says what to check."""
        try:
            await self.wait_for(lambda: self.listener(app) is not None, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the service did not connect to the fake ARI at {self.url} (app "
                f"{app or self.app!r}) within {timeout:.0f} s: is its [asterisk] url set to this "
                "address, with the same user and password?"
            ) from None

    async def wait_for_request(
        self, method: str, path_regex: str, timeout: float = 5.0, *, start: int = 0
    ) -> RecordedRequest:
        """Wait for an answered request (index >= ``start``) matching ``method`` and the path."""
        pattern = re.compile(path_regex)

        def find() -> RecordedRequest | None:
            for r in self.requests[start:]:
                if r.status is not None and r.method == method.upper() and pattern.search(r.path):
                    return r
            return None

        await self.wait_for(lambda: find() is not None, timeout, f"{method} {path_regex}")
        found = find()
        assert found is not None
        return found

    # -- events ------------------------------------------------------------------------------
    def listener(self, app: str | None = None) -> _EventSocket | None:
        """The open events socket that gets ``app``'s events, if any (None: nobody listens)."""
        sock = self._app_sockets.get(app or self.app)
        return sock if sock is not None and not sock.ws.closed else None

    def _emit(self, app: str, type_: str, fields: Mapping[str, Any]) -> None:
        """Queue an event for ``app``'s socket; with nobody listening it is lost, as on
        Asterisk."""
        sock = self.listener(app)
        if sock is not None:
            self._outbox.put_nowait((sock, {"type": type_, **fields, "application": app}))

    async def _pump(self) -> None:
        while True:
            sock, item = await self._outbox.get()
            try:
                if sock in self._sockets and not sock.ws.closed:
                    await sock.ws.send_str(item if isinstance(item, str) else json.dumps(item))
                    self.raw_sent += isinstance(item, str)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("fake asterisk: events socket gone: %s", exc)
            finally:
                self._outbox.task_done()

    def _unregister(self, sock: _EventSocket) -> None:
        if self._app_sockets.get(sock.app) is sock:
            del self._app_sockets[sock.app]
        if sock in self._sockets:
            self._sockets.remove(sock)

    async def _h_events(self, request: web.Request) -> web.StreamResponse:
        if self._refusing:
            return _error(503, "Service Unavailable")
        app = _need(request, "app", "Missing parameter app")  # one app: the service registers one
        # Pongs are ours to read (``sync``), so pings are answered here rather than by aiohttp.
        ws = web.WebSocketResponse(autoping=False, timeout=1.0)
        if not ws.can_prepare(request).ok:
            return _error(400, "WebSocket upgrade required")
        transport = request.transport
        await ws.prepare(request)
        sock = _EventSocket(ws, transport, app)
        old = self._app_sockets.get(app)
        if old is not None:
            self._outbox.put_nowait((old, {"type": "ApplicationReplaced", "application": app}))
        self._app_sockets[app] = sock
        self._sockets.append(sock)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    pong = sock.pongs.get(bytes(msg.data))
                    if pong is not None and not pong.done():
                        pong.set_result(None)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._unregister(sock)
        return ws

    # -- HTTP --------------------------------------------------------------------------------
    def _check_auth(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self.username}:{self.password}"

    @web.middleware
    async def _dispatch(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Every request: recorded, its auth checked, failed if asked to, then routed."""
        query = {k: ",".join(request.query.getall(k)) for k in dict.fromkeys(request.query.keys())}
        record = RecordedRequest(request.method, request.path, query, self._check_auth(request))
        self.requests.append(record)
        try:
            response = await self._answer(request, record, handler)
        except AriError as exc:
            response = _error(exc.status, exc.message)
        if record.status is None:
            record.status = response.status
        self.rejected += response.status >= 400
        for observer in self.observers:
            observer(record)
        return response

    async def _answer(
        self, request: web.Request, record: RecordedRequest, handler: _Handler
    ) -> web.StreamResponse:
        if not record.auth_ok:
            realm = {"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'}
            return _error(401, "Authentication required", realm)
        for i, (method, pattern, status, message) in enumerate(self._failures):
            if method in ("*", request.method) and pattern.search(request.path):
                del self._failures[i]
                return _error(status, message)
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            return _error(405, "Invalid method", {"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPNotFound:
            return _error(404, "Resource not found")

    # -- REST handlers -----------------------------------------------------------------------
    async def _h_channels_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([c.to_json() for c in self.channels.values() if not c.destroyed])

    async def _h_channel_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.pbx.channel(request.match_info["id"]).to_json())

    async def _h_originate(self, request: web.Request) -> web.StreamResponse:
        """Originate into the app (``Stasis(app[,appArgs])``); the service never originates
        into the dialplan, so an ``extension`` without ``app`` is refused here."""
        cid = _get(request, "channelId")
        if cid is not None and len(cid) > 127:
            return _error(400, "Uniqueid length exceeds maximum of 127")
        tech, _, resource = _need(request, "endpoint", "Endpoint must be specified").partition("/")
        if not tech or not resource:
            return _error(400, "Invalid endpoint specified")
        app = _need(request, "app", "Application or extension must be specified")
        timeout = _get(request, "timeout") or "30"  # ringing ends by reject_agent, not by this
        if not timeout.lstrip("-").isdigit():
            return _error(400, f"timeout: invalid integer {timeout!r}")
        if cid and self.pbx.id_taken(cid):
            return _error(409, "Channel with given unique ID already exists")
        app_args = _get(request, "appArgs") or ""
        device = re.split(r"[@/;]", resource, maxsplit=1)[0] or resource
        ch = self.pbx.add(
            ChannelState(
                id=cid or self.pbx.new_channel_id(),
                name=f"{tech}/{device}-{self.pbx.new_name_seq()}",
                kind=AGENT,
                app=app,
                state="Down",
                caller_number=_get(request, "callerId") or "",  # the service sends a bare number
                args=app_args.split(",") if app_args else [],
                audio=self.agent_audio,
            )
        )
        if self.auto_answer_agents:
            self._spawn(self._auto_answer(ch.id))
        return web.json_response(ch.to_json())

    async def _auto_answer(self, channel_id: str) -> None:
        await asyncio.sleep(0)  # after the reply
        ch = self.pbx.live(channel_id)
        if ch is not None and not ch.answered:
            self.pbx.agent_answers(ch)

    async def _h_external_media(self, request: web.Request) -> web.StreamResponse:
        app = _need(request, "app", "app cannot be empty")
        external_host = _need(request, "external_host", "external_host cannot be empty")
        remote = parse_addr(external_host)
        if remote is None or remote[1] == 0:
            return _error(400, "external_host must be <host>:<port>")
        fmt = _need(request, "format", "format cannot be empty")
        encapsulation = (_get(request, "encapsulation") or "rtp").lower()
        transport = (_get(request, "transport") or "udp").lower()
        if (encapsulation, transport) != ("rtp", "udp"):
            return _error(501, "The encapsulation and/or transport is not supported")
        if fmt not in _KNOWN_FORMATS:
            return _error(400, f"Provided format ({fmt}) was not found")
        if fmt != "ulaw":
            return _error(501, f"The fake Asterisk streams only ulaw, not {fmt}")
        cid = _get(request, "channelId")
        if cid is not None and self.pbx.id_taken(cid):
            # Asterisk 22 reports this as a general failure here (409 only on originate).
            return _error(500, "An internal error prevented this request from being handled")
        cid = cid or self.pbx.new_channel_id()
        rng = self.pbx.rng
        peer = RtpPeer(cid, remote, fmt, rng=rng)
        await peer.open(self.host)
        ch = self.pbx.add(
            ChannelState(
                id=cid,
                name=f"UnicastRTP/{external_host}-0x{rng.getrandbits(48):012x}",
                kind=EXTERNAL_MEDIA,
                app=app,
                # The UnicastRTP channel answers at once, but enters Stasis(app[,data]) only
                # after the reply has gone out, as on Asterisk 22 (see media_stasis_delay).
                state="Up",
                answered=True,
                vars={
                    "UNICASTRTP_LOCAL_ADDRESS": peer.local[0],
                    "UNICASTRTP_LOCAL_PORT": str(peer.local[1]),
                },
                rtp=peer,
            )
        )
        if self.media_stasis_before_reply:
            self._media_enters(ch.id)
            await self._outbox.join()  # its events sent before the answer
        elif self.media_stasis_delay is not None:
            self._spawn(self._media_enters_stasis(ch.id, self.media_stasis_delay))
        return web.json_response(ch.to_json())

    async def _media_enters_stasis(self, channel_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._media_enters(channel_id)

    def _media_enters(self, channel_id: str) -> None:
        ch = self.pbx.live(channel_id)
        if ch is not None and not ch.in_stasis:
            self.pbx.emit_channel(ch, "ChannelStateChange")  # Up, as Asterisk 22 reports first
            self.pbx.enter_stasis(ch)

    async def _h_hangup(self, request: web.Request) -> web.StreamResponse:
        ch = self.pbx.channel(request.match_info["id"])
        cause = _HANGUP_REASONS.get(_get(request, "reason") or "normal")
        if cause is None:
            return _error(400, "Invalid reason for hangup reason provided")
        order = ("ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed")
        self.pbx.terminate(ch, cause, order=order, soft=True)
        return web.Response(status=204)

    async def _h_answer(self, request: web.Request) -> web.StreamResponse:
        self.pbx.answer(self.pbx.control(request.match_info["id"]))
        return web.Response(status=204)

    async def _h_continue(self, request: web.Request) -> web.StreamResponse:
        self.pbx.back_to_dialplan(self.pbx.control(request.match_info["id"]))
        return web.Response(status=204)

    async def _h_variable_set(self, request: web.Request) -> web.StreamResponse:
        name = _need(request, "variable", "Variable name is required")
        self.pbx.control(request.match_info["id"]).vars[name] = _get(request, "value") or ""
        return web.Response(status=204)

    async def _h_bridges_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([b.to_json() for b in self.bridges.values() if not b.destroyed])

    async def _h_bridge_create(self, request: web.Request) -> web.StreamResponse:
        bid = _get(request, "bridgeId")
        types = _getall(request, "type") or ["mixing"]
        if any(t not in _BRIDGE_TYPES for t in types):
            return _error(400, "Invalid bridge type")
        existing = self.bridges.get(bid) if bid else None
        if existing is not None and not existing.destroyed:
            return _error(409, f"Bridge with id '{bid}' already exists")
        bridge = BridgeState(
            id=bid or self.pbx.new_uuid(), types=types, name=_get(request, "name") or ""
        )
        self.bridges[bridge.id] = bridge
        return web.json_response(bridge.to_json())

    async def _h_bridge_destroy(self, request: web.Request) -> web.StreamResponse:
        self.pbx.destroy_bridge(self.pbx.bridge(request.match_info["id"]))
        return web.Response(status=204)

    async def _h_add_channel(self, request: web.Request) -> web.StreamResponse:
        bridge = self.pbx.bridge(request.match_info["id"])
        ids = _getall(request, "channel")
        if not ids:
            return _error(400, "Missing parameter channel")
        members = []
        for cid in ids:  # Asterisk's own answers for the channels it is given
            ch = self.pbx.live(cid)
            if ch is None:
                return _error(400, "Channel not found")
            if not ch.in_stasis:
                return _error(422, "Channel not in Stasis application")
            members.append(ch)
        self.pbx.add_to_bridge(bridge, members)
        return web.Response(status=204)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake asterisk task failed", exc_info=task.exception())
