"""Overload and slow clients (issue 12.3): the connection guard, the request deadlines, one
warning instead of a traceback per failed accept(), and the cap on calls on both platforms.

The 1,100-slow-connection run against a real ``ivr serve`` at 1,024 descriptors is in
tests/robustness/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr import serving
from ivr.app_keys import CALLS
from ivr.config import DEMO_TWILIO_AUTH_TOKEN, ConfigError, Limits, load_config
from ivr.harness.fake_asterisk import FakeAsterisk
from ivr.platforms.twilio.app import TWILIO
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature
from ivr.service import ARI, VAULT, create_app
from tests.conftest import demo_service
from tests.test_asterisk_e2e import CALLER, call_row, config_file, place, still_clock, until

CONSENT_LINE = "+15550100001"  # forwards to +15550100099
MESSAGE_LINE = "+15550100005"  # no forward_to


# -- the connection guard, on a small app ---------------------------------------------------------
async def _echo(request: web.Request) -> web.Response:
    return web.Response(text=f"{len(await request.read())}\n")


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


REFUSED: list[weakref.ref[web.Request]] = []


async def _refuse(request: web.Request) -> web.Response:
    REFUSED.append(weakref.ref(request))
    raise web.HTTPRequestEntityTooLarge(max_size=10, actual_size=request.content_length or 0)


@pytest.fixture
async def served() -> AsyncIterator[serving.Served]:
    app = web.Application()
    app.router.add_get("/healthz", _ok)
    app.router.add_post("/echo", _echo)
    app.router.add_post("/refuse", _refuse)
    limits = Limits(max_connections=16, header_timeout_seconds=0.5, body_timeout_seconds=0.5)
    served = await serving.start(app, host="127.0.0.1", port=0, limits=limits)
    try:
        yield served
    finally:
        await served.stop()


@pytest.fixture
async def slow() -> AsyncIterator[Callable[..., Awaitable[asyncio.StreamReader]]]:
    """Opens a connection that sends ``head`` (by default half a request head) and no more."""
    writers: list[asyncio.StreamWriter] = []

    async def connect(port: int, head: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(head)
        await writer.drain()
        return reader

    yield connect
    for writer in writers:
        writer.close()


async def _get(port: int, path: str = "/healthz") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=3)) as r,
    ):
        return r.status, await r.text()


async def test_an_incomplete_request_head_is_closed_at_the_header_timeout(served, slow):
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader = await slow(served.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
    assert 0.4 <= loop.time() - started < 3
    assert served.guard.counters["header_timeouts"] >= 1 or not served.guard.open
    # A client that says nothing at all is closed the same way.
    silent = await slow(served.port, b"")
    assert await asyncio.wait_for(silent.read(), 5) == b""
    assert await _get(served.port) == (200, "ok\n")


async def test_a_slow_body_gets_408_at_the_body_timeout(served, slow):
    reader = await slow(
        served.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert served.guard.counters["body_timeouts"] == 1
    # A body that arrives in time is served.
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{served.port}/echo", data=b"x" * 100) as r,
    ):
        assert r.status == 200 and await r.text() == "100\n"


async def test_slow_clients_make_room_for_new_ones_at_the_connection_cap(served, slow):
    for _ in range(50):  # three times the cap, each with half a request head
        await slow(served.port)
    await until(lambda: served.guard.counters["connections"] >= 50, "the connections")
    assert len(served.guard.open) <= 16
    assert served.guard.counters["connections_displaced"] >= 34
    assert await _get(served.port) == (200, "ok\n")


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(served, slow, caplog):
    caplog.set_level(logging.WARNING, "ivr.serving")
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    for _ in range(16):  # each in a request (its body still to come): none may be closed
        await slow(served.port, head)
    await until(lambda: len(served.guard.open) == 16 and not served.guard.waiting, "busy")
    reader = await slow(served.port)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"too many open connections")
    assert served.guard.counters["connections_refused"] == 1
    assert len([r for r in caplog.records if "refusing new ones" in r.message]) == 1


async def test_running_out_of_descriptors_is_one_warning_not_a_traceback_each(served, caplog):
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    assert handler is not None
    for _ in range(10_000):  # what asyncio's accept loop reports for each failed accept()
        handler(
            loop,
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
            },
        )
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Too many open files" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert served.guard.counters["resource_errors"] == 10_000
    # Anything else still reaches asyncio's own handler.
    handler(loop, {"message": "something else", "exception": ValueError("boom")})
    assert any("something else" in r.getMessage() for r in caplog.records)


async def test_a_refused_request_and_its_unread_body_are_freed_without_the_garbage_collector(
    served,
):
    # An HTTPException caught by aiohttp sits in a reference cycle with the handler's frames,
    # so the request and its buffered body lived until a cyclic collection (rare in ivr serve):
    # oversized webhooks held hundreds of MiB. The answer itself must stay what was raised.
    REFUSED.clear()
    gc.disable()
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{served.port}/refuse"
            async with s.post(url, data=b"x" * 300_000) as r:
                assert r.status == 413
                assert r.reason == "Request Entity Too Large"
                assert r.content_type == "text/plain"
                assert "Maximum request body size 10 exceeded" in await r.text()
        assert len(REFUSED) == 1
        # The connection's task ends soon after the answer; with the cycle it never frees it.
        await until(lambda: REFUSED[0]() is None, "the refused request to be freed", timeout=10)
    finally:
        gc.enable()


def test_the_connection_cap_leaves_descriptors_for_the_calls():
    cap, warning = serving.connection_cap(Limits(max_calls=200), 1024)
    assert cap == 1024 - 64 - 2 * 128 - 2 * 200 and warning is None
    assert serving.connection_cap(Limits(max_calls=200), 65536) == (65536 - 64 - 2048 - 400, None)
    assert [serving.accept_backlog(n) for n in (1024, 4096, 8192, 20000, 1 << 20)] == [
        128,
        256,
        512,
        1024,
        1024,
    ]
    cap, warning = serving.connection_cap(Limits(max_calls=1000), 1024)
    assert cap == serving.MIN_CONNECTIONS and warning and "ulimit -n" in warning
    cap, warning = serving.connection_cap(Limits(max_connections=5000), 1024)
    assert cap == 5000 and warning and "max_connections" in warning


def test_limits_are_read_and_checked(tmp_path):
    path = tmp_path / "ivr.toml"
    path.write_text(
        "[limits]\nmax_calls = 3\nmax_connections = 100\nheader_timeout_seconds = 2.5\n"
        "body_timeout_seconds = 20\n"
    )
    assert load_config(path).limits == Limits(3, 100, 2.5, 20.0)
    assert load_config(None).limits == Limits()
    path.write_text('[limits]\nmax_calls = 0\nheader_timeout_seconds = "10"\nmax_cals = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "limits.max_calls: must be between 1 and 1000000, got 0" in text
    assert "limits.header_timeout_seconds: expected a number" in text
    assert "did you mean 'max_calls'" in text


# -- the call cap: Twilio -------------------------------------------------------------------------
@pytest.fixture
async def twilio(tmp_path, monkeypatch):
    config = replace(load_config(None), limits=Limits(max_calls=1))
    async with demo_service(tmp_path, monkeypatch, config) as (app, url, _):
        yield app, url


async def _webhook(url: str, path: str, to: str, sid: str, status: str = "ringing") -> str:
    data = {
        "CallSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+46701234567",
        "To": to,
        "CallStatus": status,
        "Direction": "inbound",
    }
    headers = {SIGNATURE_HEADER: compute_signature(DEMO_TWILIO_AUTH_TOKEN, url + path, data)}
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=headers) as r:
        assert r.status == 200
        return await r.text()


def _sid() -> str:
    return "CA" + secrets.token_hex(16)


def _calls_row(app, sid: str):
    return app[VAULT].catalog.query("SELECT * FROM calls WHERE platform_call_id = ?", (sid,))[0]


async def test_a_twilio_call_over_the_cap_goes_through_unrecorded_or_hears_busy(twilio):
    app, url = twilio
    first = _sid()
    doc = ET.fromstring(await _webhook(url, "/twilio/voice", CONSENT_LINE, first))
    assert doc.find("Connect/Stream") is not None  # the consent question, as always
    # The second call at once: a line that forwards puts the caller through, unrecorded.
    second = _sid()
    doc = ET.fromstring(await _webhook(url, "/twilio/voice", CONSENT_LINE, second))
    assert [el.tag for el in doc] == ["Dial"] and "+15550100099" in ET.tostring(doc, "unicode")
    # A line with nowhere to forward to rejects the call as busy.
    third = _sid()
    doc = ET.fromstring(await _webhook(url, "/twilio/voice", MESSAGE_LINE, third))
    assert [(el.tag, el.get("reason")) for el in doc] == [("Reject", "busy")]
    for sid in (second, third):
        row = _calls_row(app, sid)
        assert row["outcome"] == "busy" and row["ended_at"] and "max_calls" in row["end_reason"]
    assert app[TWILIO].counters["calls_turned_away"] == 2
    # Once the first call ends there is room again.
    await _webhook(url, "/twilio/status", CONSENT_LINE, first, status="completed")
    doc = ET.fromstring(await _webhook(url, "/twilio/voice", CONSENT_LINE, _sid()))
    assert doc.find("Connect/Stream") is not None


async def test_calls_arriving_at_once_do_not_pass_the_cap_together(twilio):
    app, url = twilio  # max_calls = 1
    sids = [_sid() for _ in range(8)]
    docs = await asyncio.gather(
        *(_webhook(url, "/twilio/voice", MESSAGE_LINE, sid) for sid in sids)
    )
    verbs = [[el.tag for el in ET.fromstring(doc)] for doc in docs]
    assert verbs.count(["Connect", "Redirect"]) == 1, verbs  # one consent question, 7 turned away
    assert verbs.count(["Reject"]) == 7, verbs
    assert len(app[CALLS]) == 1 and app[TWILIO].counters["calls_turned_away"] == 7


# -- the call cap: Asterisk -----------------------------------------------------------------------
async def test_an_asterisk_call_over_the_cap_goes_back_to_the_dialplan_busy(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
    config = replace(config, limits=Limits(max_calls=1))
    app = create_app(config, tmp_path / "var", fsync=False, clock=still_clock())
    server = TestServer(app)
    await server.start_server()
    await fake.wait_connected()
    try:
        first = await place(fake, app, CONSENT_LINE)
        second = await fake.place_call(CONSENT_LINE, CALLER)
        await until(lambda: app[ARI].counters["calls_turned_away"] == 1, "the call turned away")
        caller = fake.channels[second.channel_id]
        await until(lambda: caller.vars.get("IVR_ERROR") == "busy", "IVR_ERROR")
        assert not caller.destroyed  # the dialplan has it, not hung up by us
        await until(lambda: second.channel_id not in app[ARI].calls, "the channel let go")
        row = call_row(app, second.channel_id)
        assert row["outcome"] == "busy" and row["ended_at"] and "max_calls" in row["end_reason"]
        await first.talk(0.5)
        await first.hang_up()
        third = await place(fake, app, CONSENT_LINE)  # room again
        assert third.session is not None
        await third.hang_up()
    finally:
        await server.close()
        await fake.stop()
