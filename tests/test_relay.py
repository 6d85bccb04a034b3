"""Several service processes on one catalog (ivr/calls/relay.py): each webhook and each stream of
a call may reach any of them, and every consent mode still decides and records as on one.

Three services share one data directory here, in one test process: each has its own vault
writer (its own lock, as a separate process has) and its own relay listener. The simulator
sends each request of a call to the next of them in turn, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from xml.etree import ElementTree as ET

import aiohttp
import pytest

from ivr.calls.relay import FORWARDED_HOST, Relay
from ivr.config.load import DEMO_TWILIO_AUTH_TOKEN
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.app import HOLDER_GONE, TWILIO
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature
from ivr.service import VAULT
from storage.catalog import RecordingStatus
from storage.vault import Vault
from tests.conftest import demo_service
from tests.test_twilio_e2e import (
    CONSENT_LINE,
    EMERGENCY_LINE,
    MESSAGE_LINE,
    NOTICE_LINE,
    OBJECTION_LINE,
    form,
    post,
)


@pytest.fixture
async def nodes(tmp_path, monkeypatch) -> AsyncIterator[list[tuple[object, str]]]:
    """Three services on one data directory: [(app, base URL), ...]."""
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for _ in range(3):
            app, url, _server = await stack.enter_async_context(
                demo_service(tmp_path / "var", monkeypatch)
            )
            services.append((app, url))
        yield services


async def spread_call(nodes, to: str, **kw):
    """A call whose every webhook and stream goes to the next service in turn."""
    urls = tuple(url for _, url in nodes)
    options = CallOptions(url=urls[0], to=to, fast=True, nodes=urls, **kw)
    result = await simulate_call(options)
    assert result.error is None, result.transcript
    return result


def recording(nodes, result):
    vault = nodes[0][0][VAULT]
    return vault.get(result.recording_id) if result.recording_id else None


# Every consent mode: (dialled line, the simulated call's options, decision, recording status).
CASES = [
    (CONSENT_LINE, {"presses": [(3.0, "1")], "duration": 4.0}, "accepted", "complete"),
    (CONSENT_LINE, {"presses": [(15.0, "9")]}, "declined", None),
    (CONSENT_LINE, {}, "no_response", None),
    (OBJECTION_LINE, {"presses": [(3.0, "9")]}, "objected", None),
    (OBJECTION_LINE, {"duration": 3.0}, "not_objected", "complete"),
    (NOTICE_LINE, {"presses": [(2.0, "9")], "duration": 2.0}, "notified", "complete"),
    (EMERGENCY_LINE, {"duration": 2.0}, "not_asked", "complete"),
    (MESSAGE_LINE, {"presses": [(2.0, "1")], "hangup_at": 12.0}, "accepted", "complete"),
    (
        MESSAGE_LINE,
        {"presses": [(2.0, "1"), (10.0, "*")], "hangup_at": 30},
        "accepted",
        "discarded",
    ),
]
CASE_IDS = [
    "opt-in-accepted",
    "opt-in-declined",
    "opt-in-silence",
    "opt-out-objected",
    "opt-out-recorded",
    "notice",
    "emergency",
    "message",
    "withdrawn",
]


@pytest.mark.parametrize(("to", "kw", "decision", "status"), CASES, ids=CASE_IDS)
async def test_every_consent_mode_decides_and_records_across_processes(
    nodes, to, kw, decision, status
):
    result = await spread_call(nodes, to, **kw)
    assert result.decision == decision
    assert result.recording_status == status
    row = recording(nodes, result)
    if status is None:
        assert row is None
    else:
        assert row is not None and row.status.value == status
        if status == "complete":
            assert result.status_response["frames_lost"] == 0
            with nodes[0][0][VAULT].open_reader(row.id) as reader:
                tracks = {frame.track for frame in reader.frames()}
            assert tracks == ({0, 1} if len(row.tracks) == 2 else {0})
    # The call's requests went to all three; the ones that missed the holder were relayed.
    relayed = [app[TWILIO].counters for app, _ in nodes]
    assert sum(c["webhooks_relayed"] + c["streams_relayed"] for c in relayed) >= 1
    assert sum(c["relay_failures"] for c in relayed) == 0
    holder = nodes[0][0][VAULT].catalog.call_of("twilio", result.call_sid)
    assert holder["ended_at"] is not None and holder["outcome"] == decision


async def test_a_forwarded_recording_is_whole_when_its_stream_lands_elsewhere(nodes):
    # Three services, and the call's requests in turn: voice on the first (the holder), the
    # consent stream on the second, /continue on the third, the recording stream on the first
    # again... at least one of the two streams is relayed, with every frame kept.
    result = await spread_call(nodes, CONSENT_LINE, presses=[(3.0, "1")], duration=4.0)
    row = recording(nodes, result)
    assert row is not None and row.status is RecordingStatus.COMPLETE
    assert row.tracks == ("caller", "agent")
    stored = result.status_response["frames_stored"]
    assert stored >= result.frames_sent["outbound"] * 2 - 2
    streams = sum(app[TWILIO].counters["streams_relayed"] for app, _ in nodes)
    assert streams >= 1


async def test_a_call_whose_process_died_is_forwarded_unrecorded_and_closed(nodes):
    app, url = nodes[1]
    data_dir = app[VAULT].data_dir
    data = form(CONSENT_LINE)
    with Vault(data_dir, fsync=False, recover=False) as dead:  # it answered, then died
        call_id = dead.open_call(tenant="demo", platform="twilio", platform_call_id=data["CallSid"])
    async with aiohttp.ClientSession() as s:
        resp = await post(s, url, "/twilio/continue", data)
        doc = ET.fromstring(await resp.text())
        assert resp.status == 200 and [el.tag for el in doc] == ["Dial"]  # to the agent
        resp = await post(s, url, "/twilio/status", {**data, "CallStatus": "completed"})
        assert resp.status == 200 and (await resp.json())["call_id"] == call_id
    row = app[VAULT].catalog.call(call_id)
    assert row["outcome"] == "interrupted"
    assert row["end_reason"] == f"call completed; {HOLDER_GONE}"


async def test_a_holder_that_cannot_be_reached_is_a_503_not_a_wrong_answer(nodes):
    app, url = nodes[0]
    data = form(CONSENT_LINE)
    stuck = Vault(app[VAULT].data_dir, fsync=False, recover=False)  # alive, but not listening
    try:
        stuck.open_call(tenant="demo", platform="twilio", platform_call_id=data["CallSid"])
        with stuck.catalog.transaction() as db:
            stuck.catalog.register_process(db, stuck.writer_id, "http://127.0.0.1:1", "2026-12-01")
        async with aiohttp.ClientSession() as s:
            resp = await post(s, url, "/twilio/continue", data)
            assert resp.status == 503
            resp = await post(s, url, "/twilio/status", {**data, "CallStatus": "completed"})
            assert resp.status == 503
    finally:
        stuck.close()
    # Alive, but its relay address not registered (yet): unreachable too, never "gone".
    quiet = Vault(app[VAULT].data_dir, fsync=False, recover=False)
    try:
        data = form(CONSENT_LINE)
        quiet.open_call(tenant="demo", platform="twilio", platform_call_id=data["CallSid"])
        async with aiohttp.ClientSession() as s:
            assert (await post(s, url, "/twilio/continue", data)).status == 503
    finally:
        quiet.close()
    assert app[TWILIO].counters["relay_failures"] == 3


async def test_a_relayed_webhook_is_checked_by_the_holder_as_any_other(nodes):
    # A forged signature is refused where it lands, before any relay.
    (_, first), (app, second) = nodes[0], nodes[1]
    async with aiohttp.ClientSession() as s:
        data = form(CONSENT_LINE)
        assert (await post(s, first, "/twilio/voice", data)).status == 200
        assert (await post(s, second, "/twilio/status", data, token="wrong")).status == 403
    assert app[TWILIO].counters["webhooks_relayed"] == 0


async def test_the_relay_listener_says_where_it_is_and_forgets_itself(tmp_path, monkeypatch):
    async with demo_service(tmp_path / "var", monkeypatch) as (app, _, _server):
        relay = app[TWILIO].relay
        assert isinstance(relay, Relay) and relay.url is not None
        catalog = app[VAULT].catalog
        assert catalog.relay_url(app[VAULT].writer_id) == relay.url
        writer = app[VAULT].writer_id
    with Vault(tmp_path / "var", fsync=False) as vault:
        assert vault.catalog.relay_url(writer) is None


async def test_what_a_dead_process_left_is_finished_by_a_running_one(nodes):
    from ivr.calls.registry import DEAD_HOLDER_REASON
    from ivr.service import CALLS

    app = nodes[0][0]
    vault = app[VAULT]
    dead = Vault(vault.data_dir, fsync=False, recover=False)
    call_id = dead.open_call(tenant="demo", platform="twilio", platform_call_id="CA" + "7" * 32)
    rec = dead.start_recording(
        tenant="demo", call_id=call_id, lawful_basis="contract", purpose="orders"
    )
    for i in range(120):  # 2.4 s: two chunks sealed, the rest lost with the process
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    rec.wait_written()
    live_call = vault.open_call(tenant="demo", platform="twilio", platform_call_id="CA" + "8" * 32)
    os.close(dead._writer_lock)  # it dies: lock released, nothing finalised

    # Whichever process runs the background jobs does this every few seconds; here, once.
    assert await app[CALLS].recover_dead_holders(("twilio",)) == (1, 1)
    row = vault.get(rec.id)
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 2
    with vault.open_reader(rec.id) as reader:
        assert len(list(reader.frames())) == 100  # every sealed frame, decryptable
    gone = vault.catalog.call(call_id)
    assert gone["end_reason"] == DEAD_HOLDER_REASON and gone["outcome"] == "interrupted"
    assert vault.catalog.call(live_call)["ended_at"] is None  # a live process's call stays
    assert await app[CALLS].recover_dead_holders(("twilio",)) == (0, 0)


async def test_ivr_simulate_spreads_a_call_over_the_nodes_it_is_given(nodes):
    import io

    from ivr.cli.simulate import run_simulate_async
    from tests.test_harness_unit import parser

    urls = [url for _, url in nodes]
    argv = ["simulate", "--url", urls[0], "--fast", "--press", "1@2", "--duration", "2"]
    argv += [arg for url in urls for arg in ("--node", url)]
    out = io.StringIO()
    assert await run_simulate_async(parser().parse_args(argv), out) == 0
    assert out.getvalue().splitlines()[-1].startswith("decision: accepted · recording rec_")
    relayed = sum(app[TWILIO].counters["streams_relayed"] for app, _ in nodes)
    assert relayed >= 1


async def test_ivr_serve_with_two_workers_takes_calls_whichever_worker_each_request_reaches(
    tmp_path,
):
    """The real thing: ``ivr serve --workers 2`` on one port, the kernel spreading each new
    connection over the workers; calls decide and record as on one process."""
    import re

    from tests.test_workers import answers_from, logged_port, service

    with service(tmp_path, "--workers", "2") as (proc, log):
        port = logged_port(proc, log, r"listening on http://127\.0\.0\.1:(\d+) \(2 workers\)")
        url = f"http://127.0.0.1:{port}"
        calls = [
            simulate_call(CallOptions(url=url, fast=True, presses=[(2.0, "1")], duration=2.0))
            for _ in range(6)
        ]
        results = await asyncio.gather(*calls)
        for result in results:
            assert result.error is None, result.transcript
            assert result.decision == "accepted" and result.recording_status == "complete"
            assert result.status_response["frames_lost"] == 0
        pids = {int(p) for p in re.findall(r"worker \d \(pid (\d+)\) listening", log.read_text())}
        latest: dict[int, dict] = {}
        await asyncio.to_thread(answers_from, port, pids, latest)
        total: Counter[str] = Counter()
        for body in latest.values():
            total.update(body["counters"])
        # Some of the calls' requests met the other worker: webhooks were relayed, streams
        # handed over whole (ivr/calls/handover.py), never relayed between workers.
        assert total["webhooks_relayed"] + total["streams_handed_over"] >= 1
        assert total["streams_relayed"] == 0
        assert total["streams_taken_over"] == total["streams_handed_over"]
        assert total["relay_failures"] == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()


async def test_the_relay_listener_takes_only_requests_another_process_signed(nodes):
    from ivr.calls.relay import AUTH_HEADER

    app, _ = nodes[0]
    relay = app[TWILIO].relay
    assert relay is not None and relay.url is not None
    data = form(CONSENT_LINE)
    async with aiohttp.ClientSession() as s:
        # Twilio's signature is not enough: the listener is for the service's own processes.
        resp = await post(s, relay.url, "/twilio/voice", data)
        assert resp.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(relay.url + "/twilio/stream/consent")
        assert refused.value.status == 403
        forged = {FORWARDED_HOST: "evil.example", AUTH_HEADER: "1:" + "0" * 64}
        resp = await s.post(relay.url + "/twilio/voice", data=data, headers=forged)
        assert resp.status == 403
        # What another process signs passes, and is then checked as any request is.
        signature = compute_signature(DEMO_TWILIO_AUTH_TOKEN, relay.url + "/twilio/voice", data)
        headers = {
            SIGNATURE_HEADER: signature,
            AUTH_HEADER: relay.auth.header("POST", "/twilio/voice", signature),
        }
        resp = await s.post(relay.url + "/twilio/voice", data=data, headers=headers)
        assert resp.status == 200
    assert app[TWILIO].counters["relay_refused"] == 3


def test_each_worker_listens_for_relayed_requests_on_its_own_port():
    import dataclasses

    from ivr.config import load_config
    from ivr.service import relay_address
    from ivr.workers import ALONE, Worker

    config = load_config(None)
    assert relay_address(config, ALONE) == ("127.0.0.1", 0, None)
    config = dataclasses.replace(
        config, relay_listen=("0.0.0.0", 7001), relay_advertise="http://10.0.0.5:7001"
    )
    assert relay_address(config, ALONE) == ("0.0.0.0", 7001, "http://10.0.0.5:7001")
    assert relay_address(config, Worker(2, 3)) == ("0.0.0.0", 7003, "http://10.0.0.5:7003")
    v6 = dataclasses.replace(config, relay_advertise="http://[fd00::5]:7001")
    assert relay_address(v6, Worker(1, 3))[2] == "http://[fd00::5]:7002"
