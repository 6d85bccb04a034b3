"""The vault's life cycle on both blob stores (local files and S3 on SeaweedFS), and on S3 with
the catalog on PostgreSQL, same tests: recording, export, crash recovery, holds, retention,
erasure of one recording and of a data subject, discarding, orphans, and the audit chain after
all of it."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from ivr.gdpr.recording_files import export_wav
from storage import lifecycle
from storage.audit import verify_catalog
from storage.catalog import RecordingStatus
from storage.custody import generate_keypair
from storage.s3blobs import S3BlobStore
from storage.vault import Vault
from tests.test_lifecycle import CALLER, T0, Clock

MASTER = os.urandom(32)


@pytest.fixture(params=["local", "s3", "s3+postgresql"])
def store(request) -> str:
    return request.param


@pytest.fixture
def opener(store, tmp_path, request):
    """Opens the test's vault (again, for a restart) on the test's store."""
    clock = Clock(T0)
    kwargs: dict = {"master_key": MASTER, "fsync": False, "clock": clock}
    if store.startswith("s3"):
        weed = request.getfixturevalue("weed")
        bucket = request.getfixturevalue("bucket")
        kwargs.update(blob_url=f"s3://{bucket}/v", environ=weed.environ)
    if store.endswith("+postgresql"):
        kwargs.update(catalog_url=request.getfixturevalue("postgres").database())

    def open_vault() -> Vault:
        return Vault(tmp_path / "var", **kwargs)

    open_vault.clock = clock  # type: ignore[attr-defined]
    open_vault.kwargs = kwargs  # type: ignore[attr-defined]
    return open_vault


@pytest.fixture
def vault(opener):
    v = opener()
    yield v
    v.close()


def stored(vault: Vault) -> set[str]:
    """The blobs the store holds: relpaths (local files) or object keys."""
    if isinstance(vault.blobs, S3BlobStore):
        listed = vault.blobs.client.list_objects_v2(Bucket=vault.blobs.bucket)
        return {o["Key"] for o in listed.get("Contents", [])}
    root = vault.blobs.root
    return {p.relative_to(root).as_posix() for p in root.rglob("*.rec*")}


def record(vault: Vault, caller=CALLER, seconds=7, days=30, tenant="acme"):
    call = vault.open_call(tenant=tenant, platform="test", caller=caller)
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call,
        lawful_basis="consent",
        purpose="quality",
        retention_until=vault.clock() + timedelta(days=days),
    )
    sent = [(t, i * 20, bytes([(i + t) % 256]) * 160) for i in range(seconds * 50) for t in (0, 1)]
    for f in sent:
        rec.append(*f)
    return rec.close(), sent


def frames_of(vault: Vault, rid: str):
    with vault.open_reader(rid) as reader:
        return [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]


def test_round_trip_and_export(vault, store, tmp_path):
    row, sent = record(vault)
    assert row.status is RecordingStatus.COMPLETE and row.chunk_count == 7
    assert row.blob_path.startswith("s3:") == store.startswith("s3")
    assert frames_of(vault, row.id) == sent
    out = export_wav(vault, row.id, tmp_path / "out.wav", actor="test", reason="test")
    assert out.channels == 2 and out.duration_ms == 7000


def test_a_recording_left_open_is_recovered_at_the_next_start(opener, store):
    first = opener()
    rec = first.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(350):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    rec.wait_written()  # six chunks sealed and stored; the seventh is still being built
    # The process "dies": its writer lock goes, nothing is finalised.
    first.open_recordings.clear()
    first.close()
    second = opener()
    try:
        row = second.get(rec.id)
        assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 6
        assert row.duration_ms == 6000
        assert [ts for _, ts, _ in frames_of(second, rec.id)] == [i * 20 for i in range(300)]
    finally:
        second.close()


def test_hold_blocks_erasure_until_released(vault):
    row, _ = record(vault)
    lifecycle.set_hold(vault, row.id, reason="litigation 42", actor="test")
    with pytest.raises(lifecycle.LegalHold):
        lifecycle.erase(vault, row.id, reason="asked", actor="test")
    assert frames_of(vault, row.id)
    lifecycle.release_hold(vault, row.id, reason="settled", actor="test")
    assert lifecycle.erase(vault, row.id, reason="asked", actor="test").wrapped_dek is None
    assert stored(vault) == set()


def test_retention_sweep_purges_expired_and_keeps_held(vault):
    short, _ = record(vault, days=1)
    held, _ = record(vault, days=1)
    long, _ = record(vault, days=90)
    lifecycle.set_hold(vault, held.id, reason="audit", actor="test")
    before = stored(vault)
    report = lifecycle.sweep(vault, now=T0 + timedelta(days=2), dry_run=False, actor="test")
    assert [r.id for r in report.purged] == [short.id]
    assert [r.id for r in report.held] == [held.id]
    assert vault.get(short.id).status is RecordingStatus.ERASED
    assert stored(vault) < before and stored(vault)
    assert frames_of(vault, held.id) and frames_of(vault, long.id)


def test_erasing_a_subject_removes_their_recordings_only(vault):
    theirs, _ = record(vault, caller=CALLER)
    other, _ = record(vault, caller="+46709999999")
    subject = lifecycle.find_subject(vault, CALLER, ["acme"])
    report = lifecycle.erase_subject(vault, subject, reason="Art. 17", actor="test")
    assert report.erased == [theirs.id]
    assert vault.get(theirs.id).status is RecordingStatus.ERASED
    assert frames_of(vault, other.id)
    left = stored(vault)
    assert left and all(theirs.id not in k for k in left)
    assert lifecycle.remove_orphan_blobs(vault) == 0  # nothing left behind


def test_discard_and_orphans(vault):
    kept, _ = record(vault)
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(300):
        rec.append(0, i * 20, bytes(160))
    rec.wait_written()
    rec.discard(reason="consent withdrawn")
    assert vault.get(rec.id).status is RecordingStatus.DISCARDED
    assert lifecycle.remove_orphan_blobs(vault) == 0
    assert frames_of(vault, kept.id)


def test_audit_chain_verifies_after_the_life_cycle(vault):
    row, _ = record(vault)
    lifecycle.set_hold(vault, row.id, reason="x", actor="test")
    lifecycle.release_hold(vault, row.id, reason="y", actor="test")
    lifecycle.erase(vault, row.id, reason="z", actor="test")
    verdict = verify_catalog(vault.catalog)
    assert verdict.ok, verdict.problems


def test_a_recording_sealed_to_a_public_key_is_kept_and_recovered(store, opener, tmp_path):
    """Public-key custody: written, recovered structurally (no key to verify with) and read
    back with the private key, on either store."""
    private, public = generate_keypair()
    first = Vault(tmp_path / "var", public_keys={"acme": public}, **opener.kwargs)
    rec = first.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(350):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    rec.wait_written()
    first.open_recordings.clear()  # the writer "dies"
    first.close()
    second = Vault(tmp_path / "var", **opener.kwargs)
    try:
        row = second.get(rec.id)
        assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 6
        assert "unverified" in row.status_reason
        with second.open_reader(rec.id, private_key=private) as reader:
            assert [f.timestamp_ms for f in reader.frames()] == [i * 20 for i in range(300)]
    finally:
        second.close()
