"""A finished call is freed by reference counting, not left for the collector.

A reference cycle through a stream keeps everything it holds (its websocket, request and
connection, the call's session) until the collector passes over older objects, which at the
service's thresholds (ivr/service.py ``GC_THRESHOLDS``) comes after thousands of calls: memory
that grew by some 26 KiB a call. So the collector is switched off here: every stream of a
whole call (the consent stream and the recording stream) must be gone once its handler returns,
and nothing of the service's from the whole call (webhooks included) may be left for the
collector to find. The same for an Asterisk call (its ARI call, RTP leg and port, session).
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr.config import DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.harness.fake_asterisk import FakeAsterisk
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio import app as twilio_app
from ivr.service import create_app
from storage.catalog import RecordingStatus
from tests.test_asterisk_e2e import EMERGENCY_LINE, config_file, place, still_clock

CONSENT_LINE = "+15550100001"


@pytest.fixture
def no_collector():
    was = gc.isenabled()
    gc.collect()  # what earlier tests left is not this test's
    gc.disable()
    yield
    if was:
        gc.enable()


async def test_a_finished_stream_is_freed_without_the_collector(
    tmp_path, monkeypatch, no_collector
):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", DEMO_TWILIO_AUTH_TOKEN)
    streams: list[weakref.ref[object]] = []
    made = twilio_app._Stream.__init__

    def init(self, *args, **kwargs) -> None:
        made(self, *args, **kwargs)
        streams.append(weakref.ref(self))

    monkeypatch.setattr(twilio_app._Stream, "__init__", init)
    alive_after_handler: list[int] = []
    returned = asyncio.Condition()

    @web.middleware
    async def after_stream(request: web.Request, handler):
        response = await handler(request)
        if request.path.startswith("/twilio/stream/"):
            # The handler has returned: its stream must be gone (the only other reference
            # would be a cycle, which nothing collects here).
            async with returned:
                alive_after_handler.append(sum(ref() is not None for ref in streams))
                returned.notify_all()
        return response

    app = create_app(load_config(None), tmp_path / "var", fsync=False)
    app.middlewares.append(after_stream)
    server = TestServer(app)  # without handler cancellation, as ivr serve (tests/conftest.py)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        gc.collect()  # what starting the service left is not the call's
        result = await simulate_call(
            CallOptions(url=url, to=CONSENT_LINE, fast=True, presses=[(2.0, "1")], duration=2.0)
        )
        assert result.error is None and result.recording_status == "complete"
        # The recording stream's handler may still be finishing (the bound: a failure, not a
        # hang, should one never return).
        async with asyncio.timeout(30), returned:
            await returned.wait_for(lambda: len(alive_after_handler) == 2)
        left = service_garbage()
    finally:
        await server.close()
    assert len(streams) == 2  # the consent stream, then the recording stream
    assert alive_after_handler == [0, 0]
    assert left == {}  # the webhooks too: nothing of the call waits for the collector


async def test_a_finished_asterisk_call_is_freed_without_the_collector(
    tmp_path, monkeypatch, no_collector
):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
    app = create_app(config, tmp_path / "var", fsync=False, clock=still_clock())
    server = TestServer(app)
    await server.start_server()
    try:
        await fake.wait_connected()
        gc.collect()  # what starting the service left is not the call's
        call = await place(fake, app, EMERGENCY_LINE)  # recorded from the start
        await call.talk(1.0)
        ari_call = weakref.ref(call.ari)
        row = await call.hang_up()  # returns once the service has forgotten the call
        assert row is not None and row.status is RecordingStatus.COMPLETE
        del call
        assert ari_call() is None
        left = service_garbage()
    finally:
        await server.close()
        await fake.stop()
    assert left == {}


def service_garbage() -> dict[str, int]:
    """Objects of the service's (not the simulator's) that only the collector would free, by
    type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    out: dict[str, int] = {}
    for obj in found:
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        ours = name.startswith(("ivr.", "storage.", "media.", "aiohttp.web"))
        if ours and not name.startswith("ivr.harness."):
            out[name] = out.get(name, 0) + 1
    return out
