"""What the bucket and the catalog hold on PostgreSQL + S3 (the fixture
``vaults_on_postgres_and_s3``): after calls through the service, every object has an opaque
key, no metadata and no audio in clear, and the catalog no caller number in clear; and the S3
counterparts of the SQLite suite's tests of a full or torn local disk
(tests/cluster/test_pgs3_vault.py, test_pgs3_custody.py name them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest

from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.service import VAULT
from storage.catalog import RecordingStatus
from storage.custody import generate_keypair
from storage.vault import Vault
from tests.cluster.conftest import Routed
from tests.conftest import demo_service
from tests.stored_blobs import blobs_of, objects

MASTER = os.urandom(32)
CONSENT_LINE = "+15550100001"  # opt-in: "1" accepts
MESSAGE_LINE = "+15550100005"  # opt-in, then the caller's message is recorded
CALLERS = ["+46701234567", "+46709876543"]


def catalog_text(url: str) -> str:
    """Every row of every table of the catalog database, as PostgreSQL prints it (bytea as
    hex)."""
    found = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            found += [r[0] for r in conn.execute(f'SELECT t::text FROM "{table}" t')]
    return "\n".join(found)


async def test_calls_leave_nothing_personal_in_the_bucket_or_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaults_on_postgres_and_s3: Routed
):
    routed = vaults_on_postgres_and_s3
    async with demo_service(tmp_path / "var", monkeypatch) as (app, url, _):
        results = [
            await simulate_call(
                CallOptions(
                    url=url, to=CONSENT_LINE, from_=CALLERS[0], fast=True,
                    presses=[(3.0, "1")], duration=12.0,
                )
            ),
            await simulate_call(
                CallOptions(
                    url=url, to=MESSAGE_LINE, from_=CALLERS[1], fast=True,
                    presses=[(2.0, "1")], hangup_at=9.0,
                )
            ),
        ]  # fmt: skip
        for result in results:
            assert result.error is None, result.transcript
            assert result.recording_status == "complete"
        vault: Vault = app[VAULT]
        rows = [vault.get(r.recording_id) for r in results]
        # What is in clear in the calls, to look for: numbers, ids, and every audio frame.
        names = [n.encode() for n in CALLERS] + [n[1:].encode() for n in CALLERS]
        names += [r.call_sid.encode() for r in results]
        names += [row.call_id.encode() for row in rows if row.call_id]
        frames = set()
        for row in rows:
            with vault.open_reader(row.id) as reader:
                frames |= {f.payload for f in reader.frames()}
        segments = {s.key for row in rows for s in vault.segments(row.id)}
        held = objects(vault)
    prefix = routed.blob_urls[(tmp_path / "var").resolve()].removeprefix(f"s3://{routed.bucket}/")
    # Every object in the bucket is a segment of these recordings: none left beside them.
    assert {key.removeprefix(f"s3://{routed.bucket}/") for key in held} == segments
    assert len(segments) >= 4 and len(frames) >= 5  # the tone repeats: distinct frames
    for key, (data, metadata) in held.items():
        assert re.fullmatch(rf"s3://{routed.bucket}/{prefix}/[0-9a-f]{{32}}/[0-9]{{8}}", key)
        assert not any(n in key.encode() for n in names + [r.id.encode() for r in rows])
        assert metadata == {}
        assert not any(n in data for n in names), key
        assert not any(f in data for f in frames), f"an audio frame in clear in {key}"
    # The catalog keeps the numbers sealed and hashed only.
    text = catalog_text(routed.catalogs[(tmp_path / "var").resolve()])
    assert rows[0].id in text  # the check reads the rows
    for number in CALLERS:
        for form in (number, number[1:], number.encode().hex(), number[1:].encode().hex()):
            assert form not in text, f"{number} in the catalog"


def test_a_store_that_refuses_the_first_segment_fails_the_recording_cleanly(
    tmp_path: Path, vaults_on_postgres_and_s3: Routed
):
    """As a disk that fills before the first chunk (tests/test_vault.py): nothing stored, so
    the recording failed and its key is shredded."""
    with Vault(tmp_path / "data", master_key=MASTER, fsync=False) as vault:
        vault.keyring.current("acme")  # the tenant's key exists before the store refuses
        store = vault.blobs
        bucket = store.bucket  # type: ignore[attr-defined]
        rec = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
        store.bucket = "x"  # type: ignore[attr-defined] # an invalid name: a real 400
        rec.append(0, 0, b"\x00" * 160)
        row = rec.close()
        store.bucket = bucket  # type: ignore[attr-defined]
        assert row.status is RecordingStatus.FAILED and row.wrapped_dek is None
        assert "object store" in (row.status_reason or "")
        assert objects(vault) == {}


def test_recovery_without_the_key_keeps_whole_segments(
    tmp_path: Path, vaults_on_postgres_and_s3: Routed
):
    """A recording sealed to a tenant's public key, its writer dead with segments stored: a
    process without the private key keeps the stored chunks, unverified; the controller's
    reader verifies them (tests/test_custody.py does the same with a torn local file)."""
    private, public = generate_keypair()
    a = Vault(tmp_path, master_key=MASTER, fsync=False, public_keys={"acme": public})
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    sent = [(0, i * 20, bytes([i % 256]) * 160) for i in range(600)]
    for frame in sent:  # 12 s: chunks 0-10 sealed and stored, 11 still being built
        rec.append(*frame)
    rec.wait_written()
    a.open_recordings.clear()  # the process "dies": nothing finalised, its writer lock goes
    a.close()

    with Vault(tmp_path, master_key=MASTER, fsync=False) as b:  # no key to verify with
        row = b.get(rec.id)
        assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 11
        assert row.duration_ms is None and "unverified" in (row.status_reason or "")
        assert len(b.segments(rec.id)) >= 3  # segments of five chunks at most
        # What the SQLite suite's "no blob left" checks see here (not vacuous on S3).
        assert len(blobs_of(b, "acme", rec.id)) == len(b.segments(rec.id))
        assert b.recover() == []
        with b.open_reader(rec.id, private) as reader:
            kept = [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]
        assert kept == sent[:550]
