"""Refused unauthenticated API requests cost the audit log a bounded number of entries."""

from __future__ import annotations

import asyncio
import os

import aiohttp
from aiohttp.test_utils import TestServer

from ivr.api import flush_refusals
from ivr.api.refusals import MAX_SOURCES, OTHER_SOURCE, TARGET_CHARS, RefusalLedger, source_of
from ivr.config import load_config
from ivr.service import VAULT, create_app
from storage.vault import CATALOG_FILE, Vault

REQUESTS = 2_000


def api_events(events):
    return [e for e in events if e.action.startswith("api.")]


def catalog_bytes(data_dir) -> int:
    return sum(
        os.path.getsize(data_dir / name)
        for name in (CATALOG_FILE, CATALOG_FILE + "-wal")
        if (data_dir / name).exists()
    )


async def test_2000_refused_requests_add_a_bounded_number_of_small_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    data = tmp_path / "var"
    app = create_app(load_config(None), data, fsync=False)
    server = TestServer(app)
    await server.start_server()
    before_rows = app[VAULT].catalog.audit_count()
    long_id = (
        "A" * 8_000
    )  # each refused row once held the attacker's URL (8 KB: the most aiohttp takes)
    headers = [{}, {"Authorization": "Bearer nope"}]
    limit = asyncio.Semaphore(50)
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:

        async def one(i: int) -> int:
            async with limit:
                resp = await session.get(f"/api/v1/recordings/{long_id}{i}", headers=headers[i % 2])
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        assert set(statuses) == {401}
        # The first attempt of each reason is on record at once.
        events = api_events(app[VAULT].catalog.audit_events()[before_rows:])
        assert len(events) == 2
        assert {e.detail["reason"] for e in events} == {
            "a bearer token is required",
            "unknown token",
        }
        assert all(e.detail["source"] == "127.0.0.1" for e in events)
        assert all(len(e.target) <= TARGET_CHARS for e in events)
    await server.close()  # shutdown closes the window: the rest in one entry per reason
    with Vault(data, create=False) as vault:
        events = api_events(vault.catalog.audit_events()[before_rows:])
        bytes_now = catalog_bytes(data)
    repeated = [e for e in events if e.action == "api.denied.repeated"]
    assert sorted(e.detail["count"] for e in repeated) == [REQUESTS // 2 - 1] * 2
    assert sum(e.detail["actions"]["show"] for e in repeated) == REQUESTS - 2
    assert all(len(t) <= TARGET_CHARS for e in repeated for t in e.detail["targets"])
    # 2 first attempts and 2 summaries (publishing the head adds no entry).
    assert len(events) == 4
    assert sum(len(e.target or "") + len(str(e.detail)) for e in events) < 2_000
    assert bytes_now < 2_000_000  # today's empty catalog is ~0.2 MB; 2,000 rows once added 20 MB


async def test_a_new_window_audits_the_first_attempt_again(tmp_path, monkeypatch):
    # The window is closed by hand (what the service's timer calls), so no wall time is raced.
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    app = create_app(load_config(None), tmp_path, fsync=False, refusal_window=3600)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
        for _ in range(3):
            (await session.get("/api/v1/recordings")).release()
        assert await flush_refusals(app) == 1
        (await session.get("/api/v1/recordings")).release()
        events = app[VAULT].catalog.audit_events()
    await server.close()
    actions = [e.action for e in events if e.action.startswith("api.")]
    assert actions == ["api.list.denied", "api.denied.repeated", "api.list.denied"]


async def test_the_service_closes_the_window_on_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    app = create_app(load_config(None), tmp_path, fsync=False, refusal_window=0.05)
    server = TestServer(app)
    await server.start_server()

    def actions() -> list[str]:
        return [e.action for e in app[VAULT].catalog.audit_events() if e.action.startswith("api.")]

    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
        deadline = asyncio.get_running_loop().time() + 30
        # Refused again and again: within one window only the first is audited at once; the
        # next window's first is audited again, whenever the timer closes the window.
        while actions().count("api.list.denied") < 2:
            assert asyncio.get_running_loop().time() < deadline, actions()
            (await session.get("/api/v1/recordings")).release()
            await asyncio.sleep(0.01)
        seen = actions()
    await server.close()
    assert seen[0] == "api.list.denied" and seen.count("api.list.denied") == 2
    assert set(seen) <= {"api.list.denied", "api.denied.repeated"}


def test_sources_beyond_the_cap_share_one_tally():
    ledger = RefusalLedger()
    first = [
        ledger.note(f"10.0.{i // 256}.{i % 256}", "unknown token", "list", None)
        for i in range(1000)
    ]
    audited_now = [s for s in first if s is not None]
    assert len(audited_now) == MAX_SOURCES + 1 and audited_now[-1] == OTHER_SOURCE
    (other,) = [r for r in ledger.close_window() if r.source == OTHER_SOURCE]
    assert other.count == 1000 - MAX_SOURCES - 1
    assert ledger.total == {"unknown token": 1000}
    assert ledger.close_window() == []  # a new window starts empty


def test_sources_are_addresses_an_ipv6_one_as_its_slash_64():
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert (
        source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    )
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of(None) == "unknown"
