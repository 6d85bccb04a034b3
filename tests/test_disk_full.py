"""A full disk is a degraded mode, not an outage (issue 12.4): with a fault-injecting disk.

``FullDisk`` makes the vault's blob writes fail with ENOSPC and its catalog's writes with
SQLite's "database or disk is full", while reads go on working, as on a real full disk (the
tmpfs version of these tests, tests/test_disk_full_tmpfs.py, runs when we are root). Every new
call on every line still gets its answers, the call proceeds without its recording (marked
``failed``), and once the disk takes writes again every row is written: no call stays open and no
recording stays ``recording``. A shutdown meanwhile does not fail, and memory stays flat.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sqlite3
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import storage.blobs
from ivr.app_keys import CALLS
from ivr.calls import CallRegistry
from ivr.config import load_config
from ivr.consent import DigitPressed
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.prompt_library import PromptLibrary
from ivr.service import VAULT
from storage.catalog import Catalog, RecordingStatus
from storage.pending import PendingWrites
from storage.vault import Vault
from tests.conftest import demo_service

EMERGENCY_LINE = "+15550100004"
MESSAGE_LINE = "+15550100005"  # opt-in, no forward: the caller is recorded on the stream
# What to press on each line of the demo configuration so that it records where it can.
PRESSES = {"opt_in": [(2.0, "1")]}


class FullDiskConnection:
    """A catalog connection on a full disk: reads work, writes fail as SQLite's do."""

    def __init__(self, db: sqlite3.Connection, disk: FullDisk) -> None:
        self._db = db
        self._disk = disk

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        verb = sql.lstrip().split(None, 1)[0].upper()
        if self._disk.full and verb in self._disk.failing_verbs:
            self._disk.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class FullDisk:
    """Fills (and empties) the vault's disk as far as the vault can tell."""

    def __init__(self, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.refused = 0
        self.failing_verbs = {"INSERT", "UPDATE", "DELETE"}
        blobs = str(vault.blobs.root)
        real_write, real_open = os.write, storage.blobs.open_private

        def open_private(path: Path, *args: Any) -> int:
            if self.full and self.fail_create:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, *args)

        def write(fd: int, data: Any) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(blobs):
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        self.fail_create = False
        monkeypatch.setattr(storage.blobs, "open_private", open_private)
        monkeypatch.setattr(storage.blobs.os, "write", write)
        monkeypatch.setattr(
            vault.catalog._database, "_db", FullDiskConnection(vault.catalog._database._db, self)
        )


@pytest.fixture
async def service(tmp_path, monkeypatch):
    async with demo_service(tmp_path, monkeypatch) as (app, url, server):
        app[CALLS].retry_seconds = 0.05
        yield app, url, FullDisk(app[VAULT], monkeypatch), server


async def call(url: str, to: str, **kw: Any):
    return await simulate_call(CallOptions(url=url, to=to, fast=True, **kw))


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What aiohttp logs when a handler raises: the request was answered with a 500."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")]


def catalog_rows(app) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    db = app[VAULT].catalog._database._db
    return (
        db.execute("SELECT * FROM calls").fetchall(),
        db.execute("SELECT * FROM recordings").fetchall(),
    )


async def settle(app, timeout: float = 5.0) -> None:
    """Wait until the writes the disk refused are all made."""
    for _ in range(int(timeout / 0.05)):
        if not app[VAULT].pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(app[VAULT].pending)} catalog writes still kept")


# -- every line, every call ---------------------------------------------------------------------
async def test_every_line_answers_while_the_disk_is_full_and_catches_up(service, caplog):
    app, url, disk, _ = service
    config = load_config(None)
    disk.full = True
    results = {}
    for number, line in config.lines.items():
        presses = PRESSES.get(line.consent_mode.value, [])
        results[number] = await call(url, number, presses=presses, duration=2.0)
    assert disk.refused > 0
    for number, result in results.items():
        assert result.error is None, (number, [e.text for e in result.transcript])
        assert result.status_response is not None and result.decision is not None, number
        if result.recording_id is not None or result.recording_status is not None:
            # The call went on; the recording it should have had is marked failed, not lost.
            assert result.recording_status == "failed", (number, result.status_response)
    assert any(r.recording_status == "failed" for r in results.values())
    assert server_errors(caplog) == []
    assert app[VAULT].pending  # the rows wait in memory...
    calls, _ = catalog_rows(app)
    assert calls == []  # ...none reached the catalog

    disk.full = False
    await settle(app)
    calls, recordings = catalog_rows(app)
    sids = {c["platform_call_id"] for c in calls}
    assert {r.call_sid for r in results.values()} <= sids
    assert all(c["ended_at"] and c["outcome"] for c in calls)
    assert all(r["status"] != "recording" for r in recordings)
    failed = [r for r in recordings if r["status"] == "failed"]
    assert failed and all("could not start" in r["status_reason"] for r in failed)
    assert all(r["wrapped_dek"] is None for r in failed)
    # Whatever refused it, the caller's decision is kept with the failed recording.
    assert all(r["consent_evidence"] for r in failed)
    # And the next call records as usual.
    result = await call(url, MESSAGE_LINE, presses=[(2.0, "1")], duration=2.0)
    assert result.recording_status == "complete"


async def test_the_emergency_line_is_unaffected(service, caplog):
    app, url, disk, _ = service
    normal = await call(url, EMERGENCY_LINE, duration=2.0)
    disk.full = True
    degraded = await call(url, EMERGENCY_LINE, duration=2.0)
    assert degraded.error is None, [e.text for e in degraded.transcript]
    assert normal.recording_status == "complete" and degraded.recording_status == "failed"
    # The caller hears and gets exactly what they would with room on the disk.
    assert degraded.decision == normal.decision == "not_asked"
    assert degraded.prompt_ms_received == normal.prompt_ms_received == 0
    assert [_verbs(t) for t in degraded.twiml] == [_verbs(t) for t in normal.twiml]
    assert degraded.closed_by_server == normal.closed_by_server
    assert server_errors(caplog) == []
    disk.full = False
    await settle(app)
    (row,) = [r for r in app[VAULT].list() if r.id == degraded.recording_id]
    assert row.status is RecordingStatus.FAILED and row.lawful_basis == "vital_interests"


def _verbs(twiml: str) -> list[str]:
    from xml.etree import ElementTree as ET

    return [el.tag for el in ET.fromstring(twiml).iter()]


async def test_blob_creation_refused_too(service, caplog):
    """A disk so full that not even an empty file can be made: the row is written, then
    marked failed; nothing is left open."""
    app, url, disk, _ = service
    disk.full, disk.failing_verbs, disk.fail_create = True, set(), True
    result = await call(url, EMERGENCY_LINE, duration=2.0)
    assert result.error is None and result.recording_status == "failed"
    row = app[VAULT].get(result.recording_id)
    assert row.status is RecordingStatus.FAILED and "could not start" in row.status_reason
    assert not list(Path(app[VAULT].data_dir, "blobs").rglob(f"{row.id}*"))
    assert server_errors(caplog) == []


# -- a disk that fills during a call ------------------------------------------------------------
async def registry_call(tmp_path, monkeypatch, prompt_cache, number=MESSAGE_LINE):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    config = load_config(None)
    vault = Vault(tmp_path, fsync=False, master_key=bytes.fromhex("42" * 32))
    prompts = PromptLibrary.load(config, prompt_cache)
    registry = CallRegistry(vault, prompts, clock=lambda: datetime.now(UTC), retry_seconds=0.05)
    line = config.lines[number]
    call = await registry.open(
        platform="twilio", platform_call_id="CA" + "0" * 32, line=line, caller="+46701234567"
    )
    session = registry.begin(call)
    await session.start()
    await session.handle(DigitPressed(at=session.at(1.0), digit="1"))
    assert session.recording is not None
    return vault, registry, call, session


def frame(i: int) -> bytes:
    return bytes([i % 256]) * 160


async def test_a_disk_that_fills_mid_call_keeps_memory_flat_and_finishes(
    tmp_path, monkeypatch, prompt_cache
):
    vault, registry, call, session = await registry_call(tmp_path, monkeypatch, prompt_cache)
    disk = FullDisk(vault, monkeypatch)
    for i in range(500):  # 10 s on the disk
        session.audio(0, 1000 + i * 20, frame(i))
    session.recording.wait_written()
    disk.full = True
    writer = session.recording._writer
    tracemalloc.start()
    try:
        for i in range(500, 3500):  # a minute's audio for a disk that takes none
            session.audio(0, 1000 + i * 20, frame(i))
        before, _ = tracemalloc.get_traced_memory()
        for i in range(3500, 33500):  # ten more minutes
            session.audio(0, 1000 + i * 20, frame(i))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, after - before
    assert writer.buffered == 0 and session._pending == []
    # The chunk of frames 450 to 499 was still being built when the disk filled (frame 500
    # seals it): its 50 frames are lost with every later one, and the counts say so.
    assert (session.stats.frames_stored, session.stats.frames_lost) == (450, 33050)
    row = await registry.finish(call, "caller hung up")  # the status callback: no exception
    assert row is not None and row.status is RecordingStatus.INCOMPLETE
    assert "disk full" in row.status_reason
    assert vault.get(row.id).status is RecordingStatus.RECORDING  # the disk still refuses
    disk.full = False
    for _ in range(100):
        if not vault.pending:
            break
        await asyncio.sleep(0.05)
    stored = vault.get(row.id)
    assert stored.status is RecordingStatus.INCOMPLETE and 9000 <= stored.duration_ms <= 10_000
    assert vault.catalog.call(call.call_id)["ended_at"] is not None
    with vault.open_reader(row.id) as reader:
        assert sum(1 for _ in reader.frames()) == stored.duration_ms // 20
    await registry.close()
    vault.close()


async def test_closing_the_vault_on_a_full_disk_does_not_fail(tmp_path, monkeypatch, prompt_cache):
    """SIGTERM with a half-written recording on a full disk: the vault closes (no second
    abandon, no FileNotFoundError), and the next start recovers what it could not write."""
    vault, registry, _, session = await registry_call(tmp_path, monkeypatch, prompt_cache)
    disk = FullDisk(vault, monkeypatch)
    for i in range(300):
        session.audio(0, 1000 + i * 20, frame(i))
    session.recording.wait_written()
    disk.full = True
    for i in range(300, 400):
        session.audio(0, 1000 + i * 20, frame(i))
    rec_id = session.recording.id
    await registry.finish_all("service shutting down")
    await registry.close()
    vault.close()  # must not raise
    monkeypatch.undo()
    again = Vault(tmp_path, fsync=False, master_key=bytes.fromhex("42" * 32))
    row = again.get(rec_id)
    assert row.status is RecordingStatus.INCOMPLETE and 5000 <= row.duration_ms <= 6000
    assert not again.catalog.recordings(status=RecordingStatus.RECORDING)
    again.close()


def test_a_vault_opened_on_a_full_disk_recovers_and_writes_the_row_later(tmp_path):
    """A restart on a full disk: recovering a dead writer's recording must not stop the vault
    from opening (nor the service from starting); its row is kept and written later."""
    master = bytes.fromhex("42" * 32)
    dead = Vault(tmp_path, master_key=master, fsync=False)
    rec = dead.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    for i in range(230):  # 4.6 s: four chunks sealed
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    rec.wait_written()
    os.close(dead._writer_lock)  # the process died

    vault = Vault(tmp_path, master_key=master, fsync=False, recover=False)
    disk = SimpleNamespace(full=True, refused=0, failing_verbs={"INSERT", "UPDATE", "DELETE"})
    real = vault.catalog._database._db
    vault.catalog._database._db = FullDiskConnection(real, disk)  # type: ignore[assignment]
    (result,) = vault.recover()  # no exception on the full disk
    assert result.status is RecordingStatus.INCOMPLETE and disk.refused
    assert vault.get(rec.id).status is RecordingStatus.RECORDING and len(vault.pending) == 1
    disk.full = False
    assert vault.pending.flush()
    row = vault.get(rec.id)
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 4
    assert any(e.action == "recording.recovered" for e in vault.catalog.audit_events())
    vault.catalog._database._db = real
    vault.close()


async def test_service_shutdown_during_disk_full(service, caplog):
    """The service's own stop (as on SIGTERM) while a recording call is running and the disk
    is full: no error, and nothing left ``recording`` once the disk takes writes again."""
    app, url, disk, server = service
    task = asyncio.ensure_future(call(url, MESSAGE_LINE, presses=[(2.0, "1")], duration=600.0))
    for _ in range(500):  # until two seconds of audio are on the disk
        recordings = list(app[VAULT].open_recordings.values())
        if recordings and recordings[0]._blob.units >= 2:
            break
        await asyncio.sleep(0.02)
    (rec_id,) = app[VAULT].open_recordings
    disk.full = True
    await asyncio.sleep(0.2)
    vault = app[VAULT]
    with caplog.at_level(logging.ERROR):
        await server.close()
        await asyncio.wait_for(task, 30)
    assert server_errors(caplog) == []
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    disk.full = False
    again = Vault(vault.data_dir, fsync=False, master_key=bytes.fromhex("42" * 32))
    assert again.get(rec_id).status is RecordingStatus.INCOMPLETE  # what reached the disk
    assert not again.catalog.recordings(status=RecordingStatus.RECORDING)
    again.close()


# -- the parts ----------------------------------------------------------------------------------
def test_a_refused_commit_leaves_no_transaction_open(tmp_path):
    catalog = Catalog(tmp_path / "c.sqlite3", lambda: datetime.now(UTC))
    real = catalog._database._db

    class RefusesCommit(FullDiskConnection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    catalog._database._db = RefusesCommit(real, None)  # type: ignore[assignment,arg-type]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"), catalog.transaction() as db:
        catalog.insert_call(db, id="c1", tenant="t", platform="p", started_at="x")
    catalog._database._db = real
    assert not real.in_transaction
    with catalog.transaction() as db:  # the next one works
        catalog.insert_call(db, id="c2", tenant="t", platform="p", started_at="x")
    assert catalog.call("c1") is None and catalog.call("c2") is not None
    catalog.close()


def test_kept_writes_are_bounded_and_made_in_order(tmp_path, caplog):
    catalog = Catalog(tmp_path / "c.sqlite3", lambda: datetime.now(UTC))
    pending = PendingWrites(catalog, limit=3)
    real = catalog._database._db

    disk = SimpleNamespace(full=True, refused=0, failing_verbs={"INSERT", "UPDATE"})
    catalog._database._db = FullDiskConnection(real, disk)  # type: ignore[assignment,arg-type]

    def insert(call_id: str):
        return lambda db: catalog.insert_call(
            db, id=call_id, tenant="t", platform="p", started_at="x"
        )

    assert pending.write("c1", insert("c1")) is False and pending.failing
    pending.write("c1 ends", lambda db: catalog.set_call(db, "c1", ended_at="y"))
    pending.write("c2", insert("c2"))
    pending.write("c3", insert("c3"))  # over the bound: dropped, said so
    assert len(pending) == 3 and pending.dropped == 1
    assert "dropped" in caplog.text
    disk.full = False
    with pytest.raises(sqlite3.IntegrityError):  # a write refused for what it holds: raised
        pending.write("c1 again", insert("c1"))  # (after the kept ones, made first)
    assert not pending and not pending.failing and pending.written_late == 3
    assert catalog.call("c1")["ended_at"] == "y" and catalog.call("c2") is not None
    assert catalog.call("c3") is None
    catalog.close()


def test_refused_writes_without_defer_raise(tmp_path):
    catalog = Catalog(tmp_path / "c.sqlite3", lambda: datetime.now(UTC))
    pending = PendingWrites(catalog)

    disk = SimpleNamespace(full=True, refused=0, failing_verbs={"INSERT"})
    catalog._database._db = FullDiskConnection(catalog._database._db, disk)  # type: ignore[assignment,arg-type]
    from storage.errors import VaultWriteError

    with pytest.raises(VaultWriteError, match="disk is full"):
        pending.write(
            "c1",
            lambda db: catalog.insert_call(db, id="c1", tenant="t", platform="p", started_at="x"),
            defer=False,
        )
    assert not pending


async def test_healthz_says_degraded_while_the_disk_refuses_writes_and_ok_after(service, caplog):
    from aiohttp.test_utils import make_mocked_request

    from ivr.service import healthz

    app, url, disk, _ = service
    disk.full = True
    result = await call(url, EMERGENCY_LINE, duration=1.0)
    assert result.error is None
    body = json.loads((await healthz(make_mocked_request("GET", "/healthz", app=app))).text)
    assert body["status"] == "degraded" and body["disk"]["ok"] is False
    assert body["disk"]["writes_waiting"] > 0
    assert any("cannot be written" in p for p in body["problems"])
    disk.full = False
    await settle(app)
    body = json.loads((await healthz(make_mocked_request("GET", "/healthz", app=app))).text)
    assert body["disk"]["ok"] is True and body["disk"]["writes_waiting"] == 0
    # A sweep that ran while the disk was full stays reported until a round succeeds.
    assert not [p for p in body["problems"] if "cannot be written" in p], body["problems"]
