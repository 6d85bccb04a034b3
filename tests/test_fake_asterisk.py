"""The fake Asterisk (``ivr.harness.fake_asterisk``) against a tiny scripted ARI client.

The client here is plain aiohttp plus a UDP socket, not the real adapter: it checks that the
fake speaks ARI and RTP the way ``PROTOCOLS.md`` §2 / §2.1 describe, and that its driver-side
controls (key presses, hang-ups, faults) do what they say. The fake sends RTP only when a test
says so, except in one short test of the simulator's real-time caller.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import numpy as np
import pytest

from ivr.harness import audio as harness_audio
from ivr.harness.asterisk_sim import AsteriskCallOptions, _drive
from ivr.harness.fake_asterisk import (
    PT_PCMU,
    PT_TELEPHONE_EVENT,
    FakeAsterisk,
    FakeCall,
    build_rtp,
    mix_frames,
    parse_rtp,
    telephone_event_payload,
)
from ivr.harness.twilio_sim import CallResult
from media.g711 import ulaw_decode

APP = "consent-test"
USER = "ari-user"
PASS = "ari-pass"


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header (aiohttp's ``BasicAuth`` is deprecated)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


CALLER_TONE = harness_audio.tone(440.0, -12.0)
AGENT_TONE = harness_audio.tone(660.0, -12.0)


# -- a tiny ARI client -----------------------------------------------------------------------------
class Ari:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def __call__(self, method: str, path: str, **params: Any) -> tuple[int, Any]:
        query = {k: str(v) for k, v in params.items() if v is not None}
        async with self.session.request(method, self.base + path, params=query) as r:
            body = await r.read()
            return r.status, (json.loads(body) if body else None)


class Events:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def next(self, timeout: float = 2.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def expect(self, *types: str) -> list[dict[str, Any]]:
        got = [await self.next() for _ in types]
        assert [e["type"] for e in got] == list(types)
        return got

    async def quiet(self) -> None:
        with pytest.raises(TimeoutError):
            await self.ws.receive(timeout=0.02)


class UdpSink(asyncio.DatagramProtocol):
    """The app's RTP socket (where the fake sends caller audio)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    async def take(self, n: int, timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
        return [await asyncio.wait_for(self.queue.get(), timeout) for _ in range(n)]

    def empty(self) -> bool:
        return self.queue.empty()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    f = FakeAsterisk(app=APP, username=USER, password=PASS, seed=7, caller_audio=CALLER_TONE)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=basic(USER, PASS)) as s:
        yield s


@pytest.fixture
def ari(fake: FakeAsterisk, session: aiohttp.ClientSession) -> Ari:
    return Ari(session, fake.url)


@pytest.fixture
async def events(fake: FakeAsterisk, session: aiohttp.ClientSession) -> AsyncIterator[Events]:
    ws = await session.ws_connect(fake.events_url)
    await fake.wait_connected()
    try:
        yield Events(ws)
    finally:
        await ws.close()


@pytest.fixture
async def sink() -> AsyncIterator[UdpSink]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(UdpSink, local_addr=("127.0.0.1", 0))
    try:
        yield proto
    finally:
        transport.close()


async def bridged_call(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink, **kw: Any
) -> tuple[FakeCall, str, dict[str, Any]]:
    """answer -> bridge -> externalMedia -> addChannel, the way the adapter does it."""
    call = await fake.place_call("4930100", "+4915112345678", **kw)
    (start,) = await events.expect("StasisStart")
    cid = start["channel"]["id"]
    assert (await ari("POST", f"/channels/{cid}/answer"))[0] == 204
    await events.expect("ChannelStateChange")
    status, bridge = await ari("POST", "/bridges", type="mixing", bridgeId=f"br-{cid}")
    assert status == 200
    host, port = sink.addr
    status, ext = await ari(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host=f"{host}:{port}",
        format="ulaw",
        channelId=f"em-{cid}",
        encapsulation="rtp",
        transport="udp",
        direction="both",
    )
    assert status == 200
    await events.expect("ChannelStateChange", "StasisStart")
    assert (await ari("POST", f"/bridges/{bridge['id']}/addChannel", channel=f"{cid},{ext['id']}"))[
        0
    ] == 204
    await events.expect("ChannelEnteredBridge", "ChannelEnteredBridge")
    return call, bridge["id"], ext


async def test_external_media_enters_stasis_after_the_reply_as_on_asterisk_22(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    """Asterisk 22 answers POST /channels/externalMedia first; the channel enters the app a
    moment later, and a bridge refuses it with 422 until then."""
    fake.media_stasis_delay = 0.2
    await fake.place_call("100", "+4930777")
    cid = (await events.next())["channel"]["id"]
    _, bridge = await ari("POST", "/bridges", type="mixing")
    status, ext = await ari(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host="{}:{}".format(*sink.addr),
        format="ulaw",
        channelId="ivr-media-1",
    )
    assert status == 200 and not fake.channels[ext["id"]].in_stasis
    status, body = await ari("POST", f"/bridges/{bridge['id']}/addChannel", channel=ext["id"])
    assert (status, body) == (422, {"message": "Channel not in Stasis application"})
    _, start = await events.expect("ChannelStateChange", "StasisStart")
    assert start["channel"]["id"] == "ivr-media-1"
    assert (await ari("POST", f"/bridges/{bridge['id']}/addChannel", channel=ext["id"]))[0] == 204
    # A new id that is a prefix of a live one is refused, like an equal one (case ignored).
    for taken in ("ivr-media-1", "ivr-media-", "IVR-MEDIA-1"):
        status, body = await ari(
            "POST",
            "/channels/externalMedia",
            app=APP,
            channelId=taken,
            format="ulaw",
            external_host="{}:{}".format(*sink.addr),
        )
        assert (status, body["message"]) == (
            500,
            "An internal error prevented this request from being handled",
        )
    status, _ = await ari(
        "POST",
        "/channels/externalMedia",
        app=APP,
        channelId="ivr-media-12",
        format="ulaw",
        external_host="{}:{}".format(*sink.addr),
    )
    assert status == 200  # longer than the live id: not a prefix of it
    assert cid in fake.channels


def rtp(data: bytes) -> tuple[Any, bytes]:
    parsed = parse_rtp(data)
    assert parsed is not None
    return parsed


# -- auth and request checking ---------------------------------------------------------------------
async def test_auth_is_required(fake: FakeAsterisk) -> None:
    """HTTP Basic, as the service sends it; ``api_key`` (which it never sends) is refused."""
    async with aiohttp.ClientSession() as anon:
        async with anon.get(f"{fake.url}/channels") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic")
            assert (await r.json()) == {"message": "Authentication required"}
        async with anon.get(f"{fake.url}/channels", headers=basic(USER, "nope")) as r:
            assert r.status == 401
        async with anon.get(f"{fake.url}/channels", params={"api_key": f"{USER}:{PASS}"}) as r:
            assert r.status == 401
        async with anon.get(f"{fake.url}/channels", headers=basic(USER, PASS)) as r:
            assert r.status == 200
            assert await r.json() == []
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await anon.ws_connect(fake.events_url)
        assert err.value.status == 401
        ws = await anon.ws_connect(fake.events_url, headers=basic(USER, PASS))
        await fake.wait_connected()
        await ws.close()
    assert [r.auth_ok for r in fake.requests] == [False, False, False, True, False, True]
    assert [r.status for r in fake.requests] == [401, 401, 401, 200, 401, 101]
    assert fake.requests[2].query == {"api_key": f"{USER}:{PASS}"}
    assert fake.rejected == 4


async def test_request_errors_look_like_asterisks(fake: FakeAsterisk, ari: Ari) -> None:
    call = await fake.place_call("100", "+4930111")
    cid = call.channel_id
    checks: list[tuple[tuple[str, str], dict[str, Any], int, str | None]] = [
        (("GET", "/nothing/here"), {}, 404, "Resource not found"),
        (("PUT", "/channels"), {}, 405, "Invalid method"),
        (("DELETE", f"/channels/{cid}/answer"), {}, 405, "Invalid method"),
        (("POST", "/channels/nope/answer"), {}, 404, "Channel not found"),
        (("DELETE", "/channels/nope"), {}, 404, "Channel not found"),
        (("GET", "/channels/nope"), {}, 404, "Channel not found"),
        (("POST", "/channels"), {"app": APP}, 400, "Endpoint must be specified"),
        (("POST", "/channels"), {"endpoint": "PJSIP"}, 400, "Invalid endpoint specified"),
        (
            ("POST", "/channels"),
            {"endpoint": "PJSIP/agent"},
            400,
            "Application or extension must be specified",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "format": "ulaw"},
            400,
            "external_host cannot be empty",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"external_host": "127.0.0.1:4000", "format": "ulaw"},
            400,
            "app cannot be empty",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1", "format": "ulaw"},
            400,
            "external_host must be <host>:<port>",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1:4000"},
            400,
            "format cannot be empty",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1:4000", "format": "mp3"},
            400,
            "Provided format (mp3) was not found",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1:4000", "format": "opus"},
            501,
            None,
        ),
        (  # a format Asterisk knows that the fake does not stream (the service sends ulaw)
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1:4000", "format": "alaw"},
            501,
            "The fake Asterisk streams only ulaw, not alaw",
        ),
        (
            ("POST", "/channels/externalMedia"),
            {"app": APP, "external_host": "127.0.0.1:4000", "format": "ulaw", "transport": "tcp"},
            501,
            "The encapsulation and/or transport is not supported",
        ),
        (("POST", "/bridges"), {"type": "bogus"}, 400, "Invalid bridge type"),
        (("POST", "/bridges/nope/addChannel"), {"channel": cid}, 404, "Bridge not found"),
        (("DELETE", "/bridges/nope"), {}, 404, "Bridge not found"),
        (("POST", f"/channels/{cid}/variable"), {}, 400, "Variable name is required"),
        # What the service never asks for is not served.
        (("POST", f"/channels/{cid}/play"), {"media": "sound:x"}, 404, "Resource not found"),
        (("GET", f"/channels/{cid}/variable"), {"variable": "X"}, 405, "Invalid method"),
        (("POST", "/bridges/b0/removeChannel"), {"channel": cid}, 404, "Resource not found"),
        (("GET", "/asterisk/info"), {}, 404, "Resource not found"),
    ]
    for (method, path), params, status, message in checks:
        got_status, body = await ari(method, path, **params)
        assert got_status == status, (method, path, params, body)
        assert isinstance(body, dict) and isinstance(body.get("message"), str)
        if message is not None:
            assert body["message"] == message, (method, path)

    status, bridge = await ari("POST", "/bridges", bridgeId="b1")
    assert status == 200 and bridge["id"] == "b1" and bridge["bridge_type"] == "mixing"
    assert await ari("POST", "/bridges", bridgeId="b1") == (
        409,
        {"message": "Bridge with id 'b1' already exists"},
    )
    assert await ari("POST", "/bridges/b1/addChannel") == (
        400,
        {"message": "Missing parameter channel"},
    )
    assert await ari("POST", "/bridges/b1/addChannel", channel="ghost") == (
        400,
        {"message": "Channel not found"},
    )
    # Leaving Stasis: the channel still exists, but the app no longer controls it.
    assert (await ari("POST", f"/channels/{cid}/continue"))[0] == 204
    assert await ari("POST", f"/channels/{cid}/answer") == (
        409,
        {"message": "Channel not in Stasis application"},
    )
    assert await ari("POST", "/bridges/b1/addChannel", channel=cid) == (
        422,
        {"message": "Channel not in Stasis application"},
    )
    await call.hangup()
    assert await ari("POST", f"/channels/{cid}/answer") == (404, {"message": "Channel not found"})
    assert fake.rejected == len(checks) + 6
    assert all(r.auth_ok for r in fake.requests)


async def test_missing_app_on_the_events_socket_is_a_400(fake: FakeAsterisk, ari: Ari) -> None:
    status, body = await ari("GET", "/events")
    assert (status, body) == (400, {"message": "Missing parameter app"})


# -- events ----------------------------------------------------------------------------------------
async def test_stasis_start_has_asterisks_shape(fake: FakeAsterisk, events: Events) -> None:
    await fake.place_call(
        "4930100", "+4915112345678", args=["inbound", "de"], channel_vars={"X_TENANT": "acme"}
    )
    event = await events.next()
    # What the service reads of an event (ivr/platforms/asterisk/ari.py), in Asterisk's shape.
    assert list(event) == ["type", "args", "channel", "application"]
    assert event["type"] == "StasisStart"
    assert event["application"] == APP
    assert event["args"] == ["inbound", "de"]
    ch = event["channel"]
    assert list(ch) == ["id", "name", "state", "caller", "dialplan", "channelvars"]
    assert re.fullmatch(r"\d+\.\d+", ch["id"])
    assert re.fullmatch(r"PJSIP/caller-[0-9a-f]{8}", ch["name"])
    assert ch["state"] == "Ring"
    assert ch["caller"] == {"number": "+4915112345678"}
    assert ch["dialplan"] == {"exten": "4930100"}
    assert ch["channelvars"] == {"X_TENANT": "acme"}

    await fake.place_call("4930100", "+4930222")
    second = await events.next()
    assert second["type"] == "StasisStart"
    assert "channelvars" not in second["channel"]
    assert second["args"] == []
    assert second["channel"]["id"] != ch["id"]


async def test_a_newer_socket_replaces_the_older_one(
    fake: FakeAsterisk, session: aiohttp.ClientSession, events: Events
) -> None:
    newer = Events(await session.ws_connect(fake.events_url))
    replaced = await events.next()
    assert replaced["type"] == "ApplicationReplaced" and replaced["application"] == APP
    await fake.place_call("100", "+4930333")
    assert (await newer.next())["type"] == "StasisStart"
    await events.quiet()
    await newer.ws.close()


async def test_press_and_the_default_hangup(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call, bridge_id, ext = await bridged_call(fake, ari, events, sink)
    await call.press("5")
    await call.press("#", duration_ms=240)
    dtmf = await events.expect("ChannelDtmfReceived", "ChannelDtmfReceived")
    assert [(e["digit"], e["duration_ms"]) for e in dtmf] == [("5", 100), ("#", 240)]
    assert dtmf[0]["channel"]["id"] == call.channel_id
    assert dtmf[0]["channel"]["state"] == "Up"

    await call.hangup()
    # As on Asterisk 22: a caller's last event is StasisEnd (no ChannelDestroyed after it).
    got = await events.expect("ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd")
    await events.quiet()
    assert got[0]["cause"] == 16 and "soft" not in got[0]
    assert got[1]["bridge"]["id"] == bridge_id
    assert got[1]["bridge"]["channels"] == [ext["id"]]
    assert {e["channel"]["id"] for e in got} == {call.channel_id}
    state = fake.channels[call.channel_id]
    assert state.destroyed and state.bridge_id is None and not state.in_stasis
    assert fake.bridges[bridge_id].channels == [ext["id"]]
    with pytest.raises(RuntimeError):
        await call.press("1")
    with pytest.raises(RuntimeError):
        await call.send_audio(1)


async def test_hangup_order_and_duplicates_are_configurable(
    fake: FakeAsterisk, events: Events
) -> None:
    call = await fake.place_call("100", "+4930444")
    await events.expect("StasisStart")
    await call.hangup(
        cause=17, order=("ChannelDestroyed", "StasisEnd", "ChannelHangupRequest"), duplicate=True
    )
    got = await events.expect(
        "ChannelDestroyed",
        "ChannelDestroyed",
        "StasisEnd",
        "StasisEnd",
        "ChannelHangupRequest",
        "ChannelHangupRequest",
    )
    assert got[0]["cause_txt"] == "User busy"

    other = await fake.place_call("100", "+4930555")
    await events.expect("StasisStart")
    await other.hangup(order=("StasisEnd", "ChannelDestroyed"), duplicate={"ChannelDestroyed"})
    await events.expect("StasisEnd", "ChannelDestroyed", "ChannelDestroyed")
    await events.quiet()
    with pytest.raises(ValueError):
        await (await fake.place_call("100", "+1")).hangup(order=("Bogus",))


# -- the REST sequence and RTP ---------------------------------------------------------------------
async def test_rest_sequence_returns_asterisks_json_and_streams_rtp(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call = await fake.place_call("4930100", "+4915112345678")
    cid = (await events.next())["channel"]["id"]

    assert await ari("POST", f"/channels/{cid}/answer") == (204, None)
    (change,) = await events.expect("ChannelStateChange")
    assert change["channel"]["state"] == "Up"
    assert fake.channels[cid].answered

    status, bridge = await ari("POST", "/bridges", type="mixing", bridgeId="call-bridge")
    assert status == 200
    assert bridge["id"] == "call-bridge"
    assert bridge["bridge_type"] == "mixing" and bridge["channels"] == []

    host, port = sink.addr
    status, ext = await ari(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host=f"{host}:{port}",
        format="ulaw",
        channelId="em-1",
    )
    assert status == 200
    assert ext["id"] == "em-1"
    assert ext["name"].startswith(f"UnicastRTP/{host}:{port}-")
    local_addr = ext["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"]
    local_port = int(ext["channelvars"]["UNICASTRTP_LOCAL_PORT"])
    assert local_addr == "127.0.0.1" and 0 < local_port < 65536
    up, own = await events.expect("ChannelStateChange", "StasisStart")
    assert up["channel"]["id"] == "em-1" and up["channel"]["state"] == "Up"
    assert own["channel"]["id"] == "em-1" and own["channel"]["name"].startswith("UnicastRTP/")
    assert own["args"] == []
    assert fake.channels["em-1"].vars["UNICASTRTP_LOCAL_PORT"] == str(local_port)

    assert await ari("POST", "/bridges/call-bridge/addChannel", channel=f"{cid},em-1") == (
        204,
        None,
    )
    entered = await events.expect("ChannelEnteredBridge", "ChannelEnteredBridge")
    assert [e["channel"]["id"] for e in entered] == [cid, "em-1"]
    assert entered[1]["bridge"]["channels"] == [cid, "em-1"]
    assert fake.channels[cid].bridge_id == "call-bridge"
    assert fake.bridges["call-bridge"].channels == [cid, "em-1"]
    assert call.media is not None and call.media.local == (local_addr, local_port)
    assert await call.wait_until_bridged() is call.media

    # Nothing is sent until the driver says so.
    assert sink.empty()
    sent = await call.send_audio(5)
    got = await sink.take(5)
    assert [d for d, _ in got] == sent
    assert {a for _, a in got} == {(local_addr, local_port)}  # symmetric: from the local port
    headers = [rtp(d)[0] for d, _ in got]
    payloads = [rtp(d)[1] for d, _ in got]
    assert all(h.version == 2 and h.payload_type == PT_PCMU for h in headers)
    assert [h.marker for h in headers] == [True, False, False, False, False]
    assert len({h.ssrc for h in headers}) == 1
    for a, b in itertools.pairwise(headers):
        assert b.sequence == (a.sequence + 1) & 0xFFFF
        assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
    assert all(len(p) == 160 for p in payloads)
    assert payloads == [CALLER_TONE.frame(i) for i in range(5)]

    # The app's RTP (our prompt) is recorded with its source and arrival times.
    assert sink.transport is not None
    prompt = [bytes([0x55 + i]) * 160 for i in range(3)]
    for i, p in enumerate(prompt):
        sink.transport.sendto(
            build_rtp(0, 1000 + i, 160 * i, 0xABCDEF, p), (local_addr, local_port)
        )
    sink.transport.sendto(b"\x00garbage", (local_addr, local_port))
    await fake.wait_for(lambda: len(call.received_rtp()) >= 4, 2.0, "4 RTP packets")
    received = call.received_rtp()
    assert [p.header.sequence for p in received[:3] if p.header] == [1000, 1001, 1002]
    assert received[3].header is None and received[3].payload == b"\x00garbage"
    assert call.prompt_audio() == b"".join(prompt)
    assert len(received) == 4 and sum(p.header is None for p in received) == 1
    assert sum(len(p.payload) for p in received if p.header) == 480
    assert {p.source for p in received} == {sink.addr}
    assert received[0].arrival <= received[3].arrival


async def test_lost_duplicated_and_reordered_packets(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call, _, _ = await bridged_call(fake, ari, events, sink)
    first = rtp((await call.send_audio(1))[0])[0].sequence
    sent = await call.send_audio(6, drop={1}, duplicate={3}, reorder=[(4, 5)])
    got = await sink.take(1 + len(sent))
    seqs = [(rtp(d)[0].sequence - first) & 0xFFFF for d, _ in got]
    assert seqs == [0, 1, 3, 4, 4, 6, 5]
    stamps = [(rtp(d)[0].timestamp - rtp(got[0][0])[0].timestamp) for d, _ in got]
    assert stamps == [160 * s for s in seqs]
    # A dropped packet's audio is lost, not delayed.
    assert rtp(got[2][0])[1] == CALLER_TONE.frame(3)
    with pytest.raises(ValueError):
        await call.send_audio(2, drop={2})


async def test_rfc4733_dtmf_on_the_rtp_stream(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call, _, _ = await bridged_call(fake, ari, events, sink)
    (audio,) = await call.send_audio(1)
    packets = await call.also_send_dtmf_rtp("5", duration_ms=100)
    after = await call.send_audio(1)
    got = [d for d, _ in await sink.take(1 + len(packets) + 1)]
    assert got == [audio, *packets, *after]
    a0 = rtp(audio)[0]
    dtmf = [rtp(p) for p in packets]
    assert len(dtmf) == 4 + 3
    assert all(h.payload_type == PT_TELEPHONE_EVENT for h, _ in dtmf)
    assert [h.sequence for h, _ in dtmf] == [(a0.sequence + 1 + i) & 0xFFFF for i in range(7)]
    assert {h.timestamp for h, _ in dtmf} == {(a0.timestamp + 160) & 0xFFFFFFFF}
    assert [h.marker for h, _ in dtmf] == [True] + [False] * 6
    fields = [struct.unpack("!BBH", p) for _, p in dtmf]
    assert [f[0] for f in fields] == [5] * 7
    assert [bool(f[1] & 0x80) for f in fields] == [False] * 4 + [True] * 3
    assert {f[1] & 0x3F for f in fields} == {10}
    assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800]
    # The audio stream moves on by the event's duration.
    nxt = rtp(after[0])[0]
    assert nxt.payload_type == PT_PCMU
    assert nxt.timestamp == (a0.timestamp + 160 + 800) & 0xFFFFFFFF
    assert telephone_event_payload(11, end=True, volume=63, duration=1) == b"\x0b\xbf\x00\x01"


async def test_inject_rtp_from_the_media_socket_or_a_stranger(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call, _, _ = await bridged_call(fake, ari, events, sink)
    assert call.media is not None
    source = await call.inject_rtp(b"not rtp")
    stranger = await call.inject_rtp(b"\x80\x00spoof", from_stranger=True)
    (d1, a1), (d2, a2) = await sink.take(2)
    assert (d1, a1) == (b"not rtp", call.media.local) and source == call.media.local
    assert d2 == b"\x80\x00spoof" and a2 == stranger and a2[1] != call.media.local[1]


# -- app-side hang-ups and continue ----------------------------------------------------------------
async def test_app_deleting_its_external_media_channel(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    call, bridge_id, ext = await bridged_call(fake, ari, events, sink)
    assert await ari("DELETE", f"/channels/{ext['id']}", reason="normal") == (204, None)
    got = await events.expect(
        "ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"
    )
    assert {e["channel"]["id"] for e in got} == {ext["id"]}
    assert got[0]["soft"] is True
    assert fake.channels[ext["id"]].destroyed
    assert call.media is not None and call.media.closed
    assert fake.bridges[bridge_id].channels == [call.channel_id]
    with pytest.raises(RuntimeError):
        await call.send_audio(1)
    # Deleting the bridge takes the caller out of it.
    assert await ari("DELETE", f"/bridges/{bridge_id}") == (204, None)
    left, destroyed = await events.expect("ChannelLeftBridge", "BridgeDestroyed")
    assert left["channel"]["id"] == call.channel_id
    assert destroyed["bridge"]["id"] == bridge_id
    assert fake.channels[call.channel_id].bridge_id is None
    assert await ari("DELETE", f"/channels/{call.channel_id}", reason="nonsense") == (
        400,
        {"message": "Invalid reason for hangup reason provided"},
    )
    assert await ari("DELETE", f"/channels/{call.channel_id}", reason="congestion") == (204, None)
    hangup = await events.expect("ChannelHangupRequest", "StasisEnd")
    await events.quiet()
    assert hangup[0]["cause"] == 34


# -- failure injection -----------------------------------------------------------------------------
async def test_fail_next_fails_one_matching_request(
    fake: FakeAsterisk, ari: Ari, events: Events
) -> None:
    call = await fake.place_call("100", "+4930888")
    await events.expect("StasisStart")
    cid = call.channel_id
    fake.fail_next("POST", r"/answer$", 500)
    fake.fail_next("*", r"/variable$", 412)
    assert await ari("POST", f"/channels/{cid}/answer") == (
        500,
        {"message": "Internal Server Error"},
    )
    assert not fake.channels[cid].answered  # no effect
    assert await ari("POST", f"/channels/{cid}/answer") == (204, None)
    await events.expect("ChannelStateChange")
    answered = await fake.wait_for_request("POST", r"/answer$", start=len(fake.requests) - 1)
    assert answered.status == 204 and answered.path == f"/ari/channels/{cid}/answer"
    assert await ari("POST", f"/channels/{cid}/variable", variable="X", value="1") == (
        412,
        {"message": "Precondition Failed"},  # the status's reason phrase by default
    )
    assert "X" not in fake.channels[cid].vars  # a failed request has no effect
    fake.fail_next("POST", r"^/ari/bridges$", 409, "busy")
    assert await ari("POST", "/bridges") == (409, {"message": "busy"})
    assert (await ari("POST", "/bridges"))[0] == 200
    assert fake.rejected == 3
    with pytest.raises(ValueError):
        fake.fail_next("GET", ".*", 200)


async def test_dropped_events_socket_loses_events_but_rest_works(
    fake: FakeAsterisk, ari: Ari, session: aiohttp.ClientSession, events: Events
) -> None:
    assert await fake.drop_events_socket() == 1
    msg = await events.ws.receive(timeout=2.0)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    assert fake.listener() is None

    call = await fake.place_call("100", "+4930999")  # nobody listens: StasisStart is lost
    assert await ari("POST", f"/channels/{call.channel_id}/answer") == (204, None)  # and this

    again = Events(await session.ws_connect(fake.events_url))
    await fake.wait_connected()
    await call.press("7")
    event = await again.next()  # the first event on the new socket: nothing was kept
    assert event["type"] == "ChannelDtmfReceived" and event["channel"]["id"] == call.channel_id
    assert event["channel"]["state"] == "Up"
    await again.ws.close()


async def test_refused_connections_until_reenabled(
    fake: FakeAsterisk, session: aiohttp.ClientSession
) -> None:
    fake.refuse_connections(True)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await session.ws_connect(fake.events_url)
    assert err.value.status == 503
    assert fake.rejected == 1 and fake.listener() is None
    fake.refuse_connections(False)
    ws = await session.ws_connect(fake.events_url)
    await fake.wait_connected()
    await ws.close()


# -- agents and mixing -----------------------------------------------------------------------------
async def test_originate_an_agent_and_hear_the_mix(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    fake.agent_audio = AGENT_TONE
    call, bridge_id, _ = await bridged_call(fake, ari, events, sink)
    await call.send_audio(2)  # caller frames 0, 1 alone
    status, agent = await ari(
        "POST",
        "/channels",
        endpoint="PJSIP/agent",
        app=APP,
        appArgs="agent,call-1",
        callerId="+4930999000",
        timeout=30,
        channelId="agent-1",
    )
    assert status == 200
    assert agent["id"] == "agent-1" and agent["state"] == "Down"
    assert re.fullmatch(r"PJSIP/agent-[0-9a-f]{8}", agent["name"])
    change, start = await events.expect("ChannelStateChange", "StasisStart")
    assert change["channel"]["state"] == "Up"
    assert start["args"] == ["agent", "call-1"]
    assert start["channel"]["id"] == "agent-1"
    assert start["channel"]["caller"] == {"number": "+4930999000"}

    assert await ari("POST", f"/bridges/{bridge_id}/addChannel", channel="agent-1") == (204, None)
    await events.expect("ChannelEnteredBridge")
    assert call.agent is not None and call.agent.id == "agent-1"
    sent = await call.send_audio(3)
    got = [rtp(d)[1] for d, _ in await sink.take(2 + 3)]
    assert got[:2] == [CALLER_TONE.frame(0), CALLER_TONE.frame(1)]
    expected = [mix_frames([CALLER_TONE.frame(2 + i), AGENT_TONE.frame(i)]) for i in range(3)]
    assert got[2:] == expected == [rtp(d)[1] for d in sent]
    # The mix carries both tones.
    mixed = np.concatenate([ulaw_decode(p) for p in got[2:]]).astype(float)
    t = np.arange(len(mixed)) / 8000

    def level(freq: float) -> float:
        return float(abs(np.dot(mixed, np.exp(-2j * np.pi * freq * t))) / len(mixed))

    assert level(440) > 500 and level(660) > 500 and level(1000) < 100

    await call.hangup_agent()
    got_events = await events.expect(
        "ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"
    )
    assert {e["channel"]["id"] for e in got_events} == {"agent-1"}
    await call.send_audio(1)
    ((data, _),) = await sink.take(1)
    assert rtp(data)[1] == CALLER_TONE.frame(5)


async def test_unanswered_agents_are_not_in_stasis(
    fake: FakeAsterisk, ari: Ari, events: Events
) -> None:
    fake.auto_answer_agents = False
    status, agent = await ari("POST", "/channels", endpoint="PJSIP/agent", app=APP)
    assert status == 200
    await events.quiet()
    assert await ari("POST", f"/channels/{agent['id']}/answer") == (
        409,
        {"message": "Channel not in Stasis application"},
    )
    await fake.reject_agent(agent["id"])
    (destroyed,) = await events.expect("ChannelDestroyed")
    assert destroyed["cause"] == 21 and destroyed["cause_txt"] == "Call Rejected"

    _, second = await ari("POST", "/channels", endpoint="PJSIP/agent2", app=APP)
    await fake.answer_agent(second["id"])
    await events.expect("ChannelStateChange", "StasisStart")
    assert await ari("POST", "/channels", endpoint="PJSIP/x", app=APP, channelId=second["id"]) == (
        409,
        {"message": "Channel with given unique ID already exists"},
    )


def test_mix_frames_sums_and_clips() -> None:
    loud = harness_audio.tone(500.0, -1.0)
    a, b = loud.frame(0), loud.frame(0)
    mixed = ulaw_decode(mix_frames([a, b])).astype(int)
    direct = np.clip(ulaw_decode(a).astype(int) * 2, -32768, 32767)
    # μ-law re-encoding is lossy; equal up to one quantisation step of the top segment.
    assert np.max(np.abs(mixed - direct)) <= 1024
    assert mixed.max() >= 32000  # clipped rather than wrapped
    assert mix_frames([a]) == a


async def test_the_simulated_caller_streams_every_20_ms_in_real_time(
    fake: FakeAsterisk, ari: Ari, events: Events, sink: UdpSink
) -> None:
    """The only real-time test: about 100 ms of wall time. ``ivr simulate --platform asterisk``
    (without --fast) sends the caller's next packet when its 20 ms are due, until it hangs up."""
    call, _, _ = await bridged_call(fake, ari, events, sink)
    peer = call.media
    assert peer is not None
    first = peer.sequence
    options = AsteriskCallOptions(app=APP, hangup_at=0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _drive(fake, call, options, lambda text: None, CallResult(call_sid=call.channel_id))
    assert loop.time() - t0 >= 0.08  # five packets cannot go faster than 5 x 20 ms
    assert call.channel.destroyed and (peer.sequence - first) & 0xFFFF == 5  # then it hung up
    got = await sink.take(5)
    assert [(rtp(d)[0].sequence - first) & 0xFFFF for d, _ in got] == [0, 1, 2, 3, 4]
    assert [rtp(d)[1] for d, _ in got] == [CALLER_TONE.frame(i) for i in range(5)]


async def test_stop_with_an_open_events_socket_is_quick(
    session: aiohttp.ClientSession,
) -> None:
    fake = FakeAsterisk(app=APP, username=USER, password=PASS)
    await fake.start()
    ws = await session.ws_connect(fake.events_url)
    await fake.wait_connected()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await fake.stop()
    assert loop.time() - t0 < 0.6
    msg = await ws.receive(timeout=1.0)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    await fake.stop()  # twice is fine
