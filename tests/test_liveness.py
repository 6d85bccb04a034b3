"""Leases (storage/liveness.py), on the embedded catalog: the same statements run on PostgreSQL
(tests/cluster/test_pg_leases.py), where processes on other machines rely on them. Expiry is
made by moving a lease's end into the past in the table, not by waiting for it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ivr.calls.relay import AUTH_WINDOW_SECONDS, RelayAuth
from storage.catalog import Catalog, RecordingStatus
from storage.keys import now_utc
from storage.liveness import LeaseTerms, NamedLease, ProcessLease, lease_alive
from storage.vault import Vault

PAST = "2000-01-01T00:00:00.000000Z"


@pytest.fixture
def catalog(tmp_path: Path):
    catalog = Catalog(tmp_path / "catalog.sqlite3", now_utc)
    yield catalog
    catalog.close()


def expire(catalog: Catalog, writer_id: str) -> None:
    with catalog.transaction() as db:
        db.execute(
            "UPDATE processes SET lease_expires_at = ? WHERE writer_id = ?", (PAST, writer_id)
        )


def test_lease_terms_are_checked():
    assert LeaseTerms.lasting(15) == LeaseTerms(15, 5)
    for seconds, every in ((0.5, 0.1), (601, 10), (10, 10), (10, 0), (10, -1)):
        with pytest.raises(ValueError, match="lease"):
            LeaseTerms(seconds, every)


def test_a_process_is_alive_while_its_lease_holds(catalog):
    lease = ProcessLease(catalog.open_side(), "w1", LeaseTerms(10, 3), "2026-12-01T00:00:00Z")
    try:
        assert not lease_alive(catalog._database, "w1")  # not registered: not alive
        lease.take()
        assert catalog.lease_alive("w1") and not catalog.lease_alive("w2")
        assert lease.renew() and lease.lost == 0
        expire(catalog, "w1")
        assert not catalog.lease_alive("w1")
        lease.release()
        assert catalog.query("SELECT * FROM processes") == []
    finally:
        lease.database.close()


def test_a_lost_lease_is_said_and_taken_again_with_the_relay_address(catalog, caplog):
    lease = ProcessLease(catalog.open_side(), "w1", LeaseTerms(10, 3), "2026-12-01T00:00:00Z")
    try:
        lease.relay_url = "http://10.0.0.5:7001"
        lease.take()
        expire(catalog, "w1")
        with caplog.at_level(logging.ERROR, logger="storage.liveness"):
            assert not lease.renew()
        assert "lease was lost" in caplog.text and lease.lost == 1
        assert catalog.lease_alive("w1")
        catalog.forget_process("w1")  # removed as dead by another process meanwhile
        assert not lease.renew() and lease.lost == 2
        assert catalog.lease_alive("w1")
        assert catalog.relay_url("w1") == "http://10.0.0.5:7001"
    finally:
        lease.database.close()


def test_one_holder_of_a_named_lease_until_it_lapses(catalog):
    terms = LeaseTerms(10, 3)
    a = NamedLease(catalog.open_side(), "jobs", "a", terms)
    b = NamedLease(catalog.open_side(), "jobs", "b", terms)
    try:
        assert a.claim() and a.claim()  # taken, then renewed
        assert not b.claim() and a.current_holder() == "a"
        with catalog.transaction() as db:
            db.execute("UPDATE leases SET expires_at = ?", (PAST,))
        assert b.current_holder() is None
        assert b.claim() and not a.claim()  # b took it over; a's renewal fails
        b.release()
        assert a.claim()
    finally:
        a.database.close()
        b.database.close()


def test_dead_processes_rows_are_forgotten_once_they_hold_nothing(catalog):
    leases = [
        ProcessLease(catalog.open_side(), w, LeaseTerms(10, 3), "2026-12-01T00:00:00Z")
        for w in ("dead", "busy", "live")
    ]
    try:
        for lease in leases:
            lease.take()
        expire(catalog, "dead")
        expire(catalog, "busy")
        with catalog.transaction() as db:
            catalog.insert_call(
                db, id="c1", tenant="t", platform="twilio", started_at=PAST, owner="busy"
            )
        assert catalog.forget_expired_processes(60) == 1
        left = {r["writer_id"] for r in catalog.query("SELECT writer_id FROM processes")}
        assert left == {"busy", "live"}
    finally:
        for lease in leases:
            lease.database.close()


def test_a_recording_finished_by_another_process_is_not_overwritten_by_its_writer(tmp_path, caplog):
    with Vault(tmp_path, master_key=b"k" * 32, fsync=False) as vault:
        rec = vault.start_recording(tenant="t", lawful_basis="contract", purpose="orders")
        for i in range(150):
            rec.append(0, i * 20, bytes([i % 256]) * 160)
        rec.wait_written()
        # Another process took this one for dead and finished the recording meanwhile.
        with vault.catalog.transaction() as db:
            vault.catalog.update_recording(
                db, rec.id, status="incomplete", status_reason="recovered", chunk_count=2
            )
        with caplog.at_level(logging.ERROR, logger="storage.vault"):
            row = rec.close()
        assert row.status is RecordingStatus.INCOMPLETE and row.status_reason == "recovered"
        assert row.chunk_count == 2
        assert "already finished by another process" in caplog.text


def test_relay_auth_takes_only_what_a_process_of_the_service_signed():
    now = [1_800_000_000.0]
    auth = RelayAuth(b"r" * 32, wall=lambda: now[0])
    header = auth.header("POST", "/twilio/status?x=1", "sig")
    assert auth.check(header, "POST", "/twilio/status?x=1", "sig")
    assert auth.check(header, "post", "/twilio/status?x=1", "sig")
    for method, path, signature in (
        ("GET", "/twilio/status?x=1", "sig"),
        ("POST", "/twilio/status?x=2", "sig"),
        ("POST", "/twilio/status?x=1", "other"),
    ):
        assert not auth.check(header, method, path, signature)
    assert not RelayAuth(b"s" * 32, wall=lambda: now[0]).check(
        header, "POST", "/twilio/status?x=1", "sig"
    )
    for bad in (None, "", "x", "1:2:3", "abc:def", header.replace(":", ";")):
        assert not auth.check(bad, "POST", "/twilio/status?x=1", "sig")
    now[0] += AUTH_WINDOW_SECONDS + 1
    assert not auth.check(header, "POST", "/twilio/status?x=1", "sig")
    with pytest.raises(ValueError, match="16 bytes"):
        RelayAuth(b"short")
