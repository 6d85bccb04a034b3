"""The fake Asterisk (ivr/harness/fake_asterisk.py) against the real one: the same scenario,
the same events and answers.

The fake is what most tests and ``ivr simulate`` run against, so where it differs from
Asterisk 22 they confirm only what its author believed (it once put the external-media channel
in Stasis before answering the request, which hid the set-up failure of half the real calls).
This test plays the service's own ARI sequence against both and compares, per channel, the
events each sends and the status of every request, including the rules that bit: the
external-media channel cannot be bridged before it enters Stasis; a channel id that is a prefix
of a live one is refused; a bridge id in use is refused. Whether its StasisStart comes before or
after the reply to POST /channels/externalMedia is a race inside Asterisk (mostly after; before,
now and then, under load), so it is not compared here: the service is tested with both
(tests/test_asterisk_e2e.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ivr.harness.fake_asterisk import FakeAsterisk
from tests.asterisk.conftest import Phones
from tests.asterisk.pbx import Asterisk
from tests.asterisk.service import CALLER, MESSAGE_LINE

# What the service reacts to, and the bridge's own bookkeeping; variable and dialplan chatter
# (ChannelVarset, ChannelDialplan, ...) differs by design and is left out.
COMPARED = frozenset(
    {
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelEnteredBridge",
        "ChannelLeftBridge",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "BridgeDestroyed",
    }
)


@dataclass
class Transcript:
    events: dict[str, list[str]] = field(default_factory=dict)  # role -> event types
    answers: list[tuple[str, int, str]] = field(default_factory=list)  # step, status, message


class Ari:
    def __init__(self, session: aiohttp.ClientSession, base: str, user: str, password: str):
        self.session = session
        self.base = base
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    async def __call__(self, method: str, path: str, **params: str) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, params=params, headers=self.headers
        ) as r:
            body = await r.read()
            return r.status, (json.loads(body) if body else None)


async def scenario(
    ari: Ari,
    ws: aiohttp.ClientWebSocketResponse,
    place_call: Callable[[], Awaitable[None]],
    caller_hangs_up: Callable[[], Awaitable[None]],
    media_port: int,
) -> Transcript:
    out = Transcript()
    roles: dict[str, str] = {}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def reader() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                inbox.put_nowait(event)

    def note(event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind not in COMPARED:
            return
        if "bridge" in event and "channel" not in event:
            role = "bridge"
        else:
            role = roles.get(event.get("channel", {}).get("id", ""), "other")
        out.events.setdefault(role, []).append(kind)

    async def until(kind: str, channel_id: str | None = None) -> dict[str, Any]:
        while True:
            async with asyncio.timeout(10):
                event = await inbox.get()
            if "channel" in event and event["channel"]["id"] not in roles:
                roles.setdefault(event["channel"]["id"], "caller")
            note(event)
            if event["type"] == kind and (
                channel_id is None or event.get("channel", {}).get("id") == channel_id
            ):
                return event

    async def step(name: str, method: str, path: str, **params: str) -> Any:
        status, body = await ari(method, path, **params)
        message = body.get("message", "") if isinstance(body, dict) else ""
        out.answers.append((name, status, message))
        return body

    task = asyncio.create_task(reader())
    try:
        await place_call()
        start = await until("StasisStart")
        caller = start["channel"]["id"]
        await step("answer", "POST", f"/channels/{caller}/answer")
        await step("create bridge", "POST", "/bridges", type="mixing", bridgeId="contract-b")
        await step("same bridge id", "POST", "/bridges", type="mixing", bridgeId="contract-b")
        media_id = "contract-media-23"
        roles[media_id] = "media"
        await step(
            "external media",
            "POST",
            "/channels/externalMedia",
            app=Asterisk.APP,
            channelId=media_id,
            external_host=f"127.0.0.1:{media_port}",
            format="ulaw",
        )
        await step(
            "prefix of a live id",
            "POST",
            "/channels/externalMedia",
            app=Asterisk.APP,
            channelId="contract-media-2",
            external_host=f"127.0.0.1:{media_port}",
            format="ulaw",
        )
        await until("StasisStart", media_id)
        await step("bridge both", "POST", "/bridges/contract-b/addChannel", channel=caller)
        await until("ChannelEnteredBridge", caller)
        await step("bridge media", "POST", "/bridges/contract-b/addChannel", channel=media_id)
        await until("ChannelEnteredBridge", media_id)
        await step("bridge nobody", "POST", "/bridges/contract-b/addChannel", channel="nobody")
        await caller_hangs_up()
        # A channel's last event to the app is StasisEnd: Asterisk sends nothing after it
        # (no ChannelDestroyed), whoever hung up.
        await until("StasisEnd", caller)
        await step("hang up media", "DELETE", f"/channels/{media_id}")
        await until("StasisEnd", media_id)
        await step("destroy bridge", "DELETE", "/bridges/contract-b")
        await until("BridgeDestroyed")
        await step("destroy again", "DELETE", "/bridges/contract-b")
        await step("hang up again", "DELETE", f"/channels/{media_id}")
        return out
    finally:
        task.cancel()


async def against_real(pbx: Asterisk, phones: Phones) -> Transcript:
    async with aiohttp.ClientSession() as session:
        ari = Ari(session, pbx.ari_url, pbx.USER, pbx.password)
        ws = await session.ws_connect(
            pbx.ari_url.replace("http", "ws", 1) + "/events",
            params={"app": Asterisk.APP},
            headers=ari.headers,
        )
        call = None

        async def place() -> None:
            nonlocal call
            call = await phones.dial(MESSAGE_LINE, CALLER)

        async def hang_up() -> None:
            assert call is not None
            # The hang-up trigger goes to the port sipp reports with the answer; Asterisk's
            # answer reaching sipp races the ARI steps before this one.
            await call.wait_answered()
            call.hang_up()

        sink = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            return await scenario(ari, ws, place, hang_up, sink[0].get_extra_info("sockname")[1])
        finally:
            sink[0].close()
            await ws.close()


async def against_fake() -> Transcript:
    fake = FakeAsterisk(app=Asterisk.APP, username="u", password="p")
    async with fake, aiohttp.ClientSession() as session:
        ari = Ari(session, fake.url, "u", "p")
        ws = await session.ws_connect(fake.events_url, headers=ari.headers)
        calls = []

        async def place() -> None:
            calls.append(await fake.place_call(MESSAGE_LINE, CALLER))

        async def hang_up() -> None:
            await calls[0].hangup()

        sink = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            port = sink[0].get_extra_info("sockname")[1]
            return await scenario(ari, ws, place, hang_up, port)
        finally:
            sink[0].close()
            await ws.close()


async def test_the_fake_behaves_like_asterisk_22(pbx: Asterisk, phones: Phones) -> None:
    real = await against_real(pbx, phones)
    fake = await against_fake()
    assert fake.answers == real.answers
    assert fake.events == real.events
    # The rules themselves, as Asterisk states them.
    answers = {step: (status, message) for step, status, message in real.answers}
    assert answers["same bridge id"][0] == 409
    assert answers["prefix of a live id"] == (
        500,
        "An internal error prevented this request from being handled",
    )
