"""Hostile or broken input on the ARI side, and loops that heal themselves (issue 12).

One ARI event of 5,000 ``[`` used to raise RecursionError out of the events loop: the loop died
silently, every later Asterisk call was ignored, and /healthz said ok.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp.test_utils import make_mocked_request

from ivr import supervision
from ivr.platforms.asterisk import ari
from ivr.service import ARI, LOOPS, VAULT, _expire_calls, _retention_sweeper, healthz
from ivr.supervision import LoopHealth, supervise
from storage.catalog import RecordingStatus
from tests.test_asterisk_e2e import EMERGENCY_LINE, pbx, place, until

__all__ = ["pbx"]  # the fixture, used by name

NESTED = "[" * 5000


async def health(app) -> dict:
    response = await healthz(make_mocked_request("GET", "/healthz", app=app))
    assert response.status == 200
    return json.loads(response.text)


# -- the wire format ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, why",
    [
        (NESTED, "nested 5000 deep"),
        ('{"type": "StasisStart", "channel": ' + "{" * 40 + "}" * 40 + "}", "nested 41 deep"),
        ("x" * (ari.MAX_EVENT_BYTES + 1), "too large"),
        (b"\xff\xfe{}", "not JSON"),
        ("\ud800", "not JSON"),
        ('{"type": "ChannelDtmfReceived", "digit": "²", "channel": {"id": "c"}}', "digit"),
        ("[]", "without a type"),
    ],
)
def test_malformed_events_are_refused_before_or_by_parsing(text, why):
    with pytest.raises(ari.AriEventError, match=why):
        ari.parse_event(text)


def test_brackets_inside_strings_do_not_count_as_nesting():
    name = "[" * 100
    event = ari.parse_event(
        json.dumps({"type": "StasisStart", "channel": {"id": "c", "name": name}})
    )
    assert isinstance(event, ari.StasisStart) and event.channel.name == name


# -- the events loop ------------------------------------------------------------------------------
async def test_a_deeply_nested_event_is_counted_and_the_next_call_is_handled(pbx, caplog):
    fake, app = pbx
    ari_app = app[ARI]
    assert fake.send_raw(NESTED)
    await fake.sync()
    assert ari_app.counters["events_bad"] == 1
    state = await health(app)
    assert state["status"] == "ok" and state["asterisk"]["events_loop"]["state"] == "running"
    assert state["asterisk"]["events_loop"]["failures"] == 0
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(0.5)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE and call.session.stats.frames_stored == 25
    assert not any(r.exc_info for r in caplog.records)


async def test_a_failing_events_loop_restarts_and_health_says_degraded_meanwhile(
    pbx, caplog, monkeypatch
):
    """The nested-event case as it was: an exception escapes the events loop. The loop is
    restarted (counted, traceback logged once), /healthz says degraded until events flow
    again, and the next call is handled."""
    fake, app = pbx
    ari_app = app[ARI]
    handle = ari_app._on_event_text

    def old_parser(text: str) -> None:
        if text == NESTED:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        handle(text)

    monkeypatch.setattr(ari_app, "_on_event_text", old_parser)
    restarted = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await restarted.wait()

    connections = ari_app.connections
    # The supervisor again, with its backoff held open until the test has looked.
    ari_app._task.cancel()
    await asyncio.gather(ari_app._task, return_exceptions=True)
    ari_app._task = asyncio.create_task(
        supervise(ari_app.events_loop, ari_app._events_loop, sleep=slow_sleep)
    )
    await until(lambda: ari_app.connected and ari_app.connections > connections, "reconnect")
    fake.send_raw(NESTED)
    await until(lambda: ari_app.events_loop.state == supervision.RESTARTING, "the loop's failure")
    state = await health(app)
    assert state["status"] == "degraded"
    assert any("ARI events loop restarting after RecursionError" in p for p in state["problems"])
    assert state["asterisk"]["connected"] is False and state["asterisk"]["ok"] is False
    restarted.set()
    await until(lambda: ari_app.connected, "the restarted loop's connection")
    await fake.wait_connected()
    state = await health(app)
    assert state["status"] == "ok", state["problems"]
    loop = state["asterisk"]["events_loop"]
    assert loop["failures"] == 1 and loop["restarts"] == 1 and loop["state"] == "running"
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(0.5)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "ARI events loop failed" in tracebacks[0].getMessage()


async def test_an_event_we_fail_to_handle_is_counted_and_degrades_health(pbx, monkeypatch):
    fake, app = pbx
    ari_app = app[ARI]

    def broken(event: ari.AriEvent) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(ari_app, "_on_event", broken)
    for _ in range(3):
        fake.send_raw('{"type": "SomethingNew"}')
    await fake.sync()
    assert ari_app.counters["events_failed"] == 3 and ari_app.connected
    state = await health(app)
    assert state["status"] == "degraded"
    assert "an ARI event could not be handled (KeyError" in state["asterisk"]["problem"]


async def test_20000_bad_events_cost_a_few_log_lines(pbx, caplog):
    fake, app = pbx
    ari_app = app[ARI]
    caplog.set_level(logging.INFO)
    bad = [
        NESTED,
        "not json",
        '{"type": "StasisStart"}',
        '{"type": "ChannelDtmfReceived", "digit": "x", "channel": {"id": "c"}}',
        '{"type": 5}',
    ]
    for i in range(20_000):
        ari_app._on_event_text(bad[i % len(bad)])
    for text in bad * 20:  # and through the socket
        fake.send_raw(text)
    await fake.sync()
    assert ari_app.counters["events_bad"] == 20_100
    lines = [r for r in caplog.records if r.name.startswith("ivr.platforms.asterisk")]
    assert len(lines) <= 2, [r.getMessage() for r in lines]
    assert (await health(app))["status"] == "ok"


# -- supervision ----------------------------------------------------------------------------------
async def test_supervise_restarts_a_loop_with_backoff_and_logs_each_kind_once(caplog):
    health = LoopHealth("test loop")
    runs = 0
    waits: list[float] = []

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ValueError(f"bad round {runs}")
        await asyncio.Event().wait()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    task = asyncio.create_task(supervise(health, loop, sleep=sleep))
    await until(lambda: runs == 5, "the fifth run")
    assert health.failures == 4 and health.restarts == 4 and health.state == "running"
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert health.problem is not None and "failed 4 times in a row" in health.problem
    assert [bool(r.exc_info) for r in caplog.records if r.levelno >= logging.ERROR] == [
        True,
        False,
        False,
        False,
    ]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert health.state == "stopped"


async def test_a_loop_that_returns_is_restarted_too():
    health = LoopHealth("returns")
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    async def sleep(seconds: float) -> None:
        return None

    task = asyncio.create_task(supervise(health, loop, sleep=sleep))
    await until(lambda: runs == 2, "the restart")
    assert health.failures == 1 and "the loop returned" in (health.last_error or "")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_sweep_round_is_reported_and_the_sweeper_carries_on(caplog):
    health = LoopHealth("retention sweeper")

    class Broken:
        """A vault whose catalog cannot be read."""

        def __getattr__(self, name: str):
            raise OSError(28, "No space left on device")

    from datetime import UTC, datetime

    task = asyncio.create_task(
        _retention_sweeper(Broken(), lambda: datetime.now(UTC), 0.01, 30, None, health)
    )
    await until(lambda: health.failures >= 4, "two failed rounds")
    assert not task.done()
    assert health.problem is not None and "No space left on device" in health.problem
    # Each step's traceback once, then one line per failure.
    assert sum(1 for r in caplog.records if r.exc_info) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_failing_call_expiry_rounds_are_counted(monkeypatch):
    monkeypatch.setattr("ivr.service.EXPIRY_INTERVAL_SECONDS", 0.001)
    health = LoopHealth("call expiry")

    class Registry:
        async def expire(self) -> int:
            raise RuntimeError("catalog locked")

    task = asyncio.create_task(_expire_calls(Registry(), health))  # type: ignore[arg-type]
    await until(lambda: health.failures >= 3, "failed rounds")
    assert "catalog locked" in (health.problem or "")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_healthz_says_degraded_when_the_catalog_fails(pbx, monkeypatch):
    _, app = pbx

    def broken(**kw):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(app[VAULT], "list", broken)
    state = await health(app)
    assert state["status"] == "degraded" and state["catalog"]["ok"] is False
    assert "Input/output error" in state["catalog"]["error"]
    assert {"call_expiry", "retention_sweeper"} <= set(state["loops"])
    assert app[LOOPS]["call_expiry"].state == "running"


@pytest.mark.parametrize("channel_id", ["a/b", "../bridges", "x?y=1", "é1.2", "", "1" * 200])
def test_channel_ids_that_would_change_a_rest_path_are_bad_events(channel_id):
    from ivr.platforms.asterisk import ari

    event = {"type": "StasisStart", "channel": {"id": channel_id}, "args": []}
    with pytest.raises(ari.AriEventError):
        ari.parse_event(json.dumps(event))
    ok = {"type": "StasisStart", "channel": {"id": "1712345678.42", "name": "PJSIP/x"}, "args": []}
    assert ari.parse_event(json.dumps(ok)).channel.id == "1712345678.42"
