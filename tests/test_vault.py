"""The vault end to end: keys, catalog rows, crash recovery, discarding, no plaintext on disk."""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import storage.blobs
from storage.catalog import SCHEMA_VERSION, Catalog, CatalogError, RecordingStatus
from storage.keys import MasterKeyError, load_master_key, now_utc, parse_master_key
from storage.vault import NotReadable, Vault, VaultError, VaultWriteError
from tests.independent_decrypter import decrypt as independent_decrypt
from tests.stored_blobs import blob_bytes, blobs_of, objects

ROOT = Path(__file__).resolve().parent.parent
MASTER = os.urandom(32)


def pattern(i: int, track: int) -> bytes:
    """A payload that tells which frame it is, so lost or shuffled audio shows."""
    return bytes((i * 7 + track * 101 + k) % 256 for k in range(160))


@pytest.fixture
def vault(tmp_path):
    v = Vault(tmp_path / "data", master_key=MASTER, fsync=False)
    yield v
    v.close()


def frames_of(vault: Vault, rid: str) -> list[tuple[int, int, bytes]]:
    with vault.open_reader(rid) as reader:
        return [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]


def test_recording_round_trip_and_catalog_row(vault):
    call = vault.open_call(tenant="acme", platform="test", caller="+46701234567")
    rec = vault.start_recording(
        tenant="acme",
        call_id=call,
        lawful_basis="consent",
        purpose="quality",
        policy_id="acme-consent",
        policy_version=3,
        consent_evidence={"decision": "accepted", "key": "1"},
    )
    sent = [(t, i * 20, pattern(i, t)) for i in range(150) for t in (0, 1)]
    for f in sent:
        rec.append(*f)
    row = rec.close()
    assert row.status is RecordingStatus.COMPLETE
    assert row.chunk_count == 3 and row.duration_ms == 3000
    assert row.lawful_basis == "consent" and row.policy_version == 3
    assert row.consent_evidence == {"decision": "accepted", "key": "1"}
    assert row.key_ref == "local/1" and row.wrapped_dek is not None
    assert frames_of(vault, row.id) == sent
    assert vault.caller_of(call) == "+46701234567"
    # The blob on disk matches its catalog digest and the spec's independent reader.
    blob = blob_bytes(vault, row)
    assert len(blob) == row.blob_size
    assert independent_decrypt(blob, vault.data_key(row))[1] == sent


def test_key_row_is_committed_before_the_blob_exists(vault, monkeypatch):
    seen = {}
    real_create = vault.blobs.create

    def create(tenant, recording_id):
        other = sqlite3.connect(vault.catalog.path)  # what a crash-surviving reader would see
        seen["row"] = other.execute(
            "SELECT status, wrapped_dek FROM recordings WHERE id = ?", (recording_id,)
        ).fetchone()
        other.close()
        return real_create(tenant, recording_id)

    monkeypatch.setattr(vault.blobs, "create", create)
    vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders").close()
    status, wrapped = seen["row"]
    assert status == "recording" and wrapped


def test_rotation_changes_new_recordings_only(vault):
    first = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    first.append(0, 0, b"\x01" * 160)
    first = first.close()
    info = vault.keyring.rotate("acme")
    assert info.version == 2 and info.current
    second = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    second.append(0, 0, b"\x02" * 160)
    second = second.close()
    assert (first.key_ref, second.key_ref) == ("local/1", "local/2")
    assert frames_of(vault, first.id) == [(0, 0, b"\x01" * 160)]
    assert frames_of(vault, second.id) == [(0, 0, b"\x02" * 160)]
    # Another tenant's keys are untouched by acme's rotation.
    other = vault.start_recording(tenant="globex", lawful_basis="contract", purpose="orders")
    assert other.close().key_ref == "local/1"


def test_rotation_by_another_process_is_seen_by_a_running_vault(tmp_path):
    a = Vault(tmp_path, master_key=MASTER, fsync=False)
    a.start_recording(tenant="acme", lawful_basis="contract", purpose="x").close()
    b = Vault(tmp_path, master_key=MASTER, fsync=False)
    b.keyring.rotate("acme")
    b.close()
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="x")
    assert rec.close().key_ref == "local/2"
    a.close()


def test_discard_destroys_key_and_blob(vault):
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(120):
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    row = rec.discard(reason="consent withdrawn")
    assert row.status is RecordingStatus.DISCARDED and row.wrapped_dek is None
    assert not blobs_of(vault, "acme", rec.id)
    with pytest.raises(NotReadable, match="discarded"):
        frames_of(vault, rec.id)
    assert any(e.action == "recording.discarded" for e in vault.catalog.audit_events())


def test_full_disk_keeps_what_was_sealed(vault, monkeypatch):
    real_write = os.write
    budget = {"left": 30_000}

    def write(fd, data):
        if budget["left"] < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["left"] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(storage.blobs.os, "write", write)
    rec = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    with pytest.raises(VaultWriteError, match="disk full"):
        for i in range(3000):
            rec.append(0, i * 20, pattern(i, 0))
            rec.append(1, i * 20, pattern(i, 1))
            if i % 50 == 0:
                rec.wait_written()
    row = rec.close()
    assert row.status is RecordingStatus.INCOMPLETE
    assert "disk full" in row.status_reason
    kept = frames_of(vault, row.id)
    assert kept and len(kept) % 100 == 0
    assert kept == [(t, i * 20, pattern(i, t)) for i in range(len(kept) // 2) for t in (0, 1)]
    # The service carries on: the next recording on a disk with room again is complete.
    budget["left"] = 10**9
    nxt = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    nxt.append(0, 0, b"\xff" * 160)
    assert nxt.close().status is RecordingStatus.COMPLETE


def test_a_disk_that_fills_before_the_first_chunk_fails_cleanly(vault, monkeypatch):
    def write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    vault.keyring.current("acme")  # the tenant's key exists before the disk fills
    monkeypatch.setattr(storage.blobs.os, "write", write)
    rec = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    rec.append(0, 0, b"\x00" * 160)
    row = rec.close()
    assert row.status is RecordingStatus.FAILED and row.wrapped_dek is None
    assert not blobs_of(vault, "acme", rec.id)


# -- crash recovery -------------------------------------------------------------------------------
def abandon(v: Vault) -> None:
    """Make ``v`` look like a process that died: its writer lock released, nothing finalised."""
    os.close(v._writer_lock)


def test_recovery_keeps_sealed_chunks_and_cuts_a_torn_one(tmp_path):
    a = Vault(tmp_path, master_key=MASTER, fsync=False)
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    for i in range(230):  # 4.6 s: chunks 0-3 sealed, 0.6 s still in the buffer
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    part = next((tmp_path / "blobs").rglob("*.rec.part"))
    with part.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00torn chunk")  # a write cut short by the crash
    abandon(a)

    b = Vault(tmp_path, master_key=MASTER, fsync=False)
    row = b.get(rec.id)
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 4
    assert row.duration_ms == 4000 and "recovered" in row.status_reason
    assert frames_of(b, rec.id) == [(0, i * 20, pattern(i, 0)) for i in range(200)]
    assert any(e.action == "recording.recovered" for e in b.catalog.audit_events())
    assert b.recover() == []  # idempotent
    b.close()


def test_a_live_writer_is_not_recovered_by_another_process(tmp_path):
    a = Vault(tmp_path, master_key=MASTER, fsync=False)
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    rec.append(0, 0, b"\x01" * 160)
    b = Vault(tmp_path, master_key=MASTER, fsync=False)
    assert b.get(rec.id).status is RecordingStatus.RECORDING
    b.close()
    assert rec.close().status is RecordingStatus.COMPLETE
    a.close()


def test_recovery_of_a_writer_that_sealed_nothing(tmp_path):
    a = Vault(tmp_path, master_key=MASTER, fsync=False)
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    rec.append(0, 0, b"\x01" * 160)
    rec.wait_written()
    abandon(a)
    b = Vault(tmp_path, master_key=MASTER, fsync=False)
    row = b.get(rec.id)
    assert row.status is RecordingStatus.FAILED and row.wrapped_dek is None
    assert not blobs_of(b, "acme", rec.id)
    b.close()


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from storage.vault import Vault
    from tests.test_vault import pattern
    vault = Vault(Path(sys.argv[1]), fsync=True)
    call = vault.open_call(tenant="acme", platform="test", caller="+46701234567")
    rec = vault.start_recording(tenant="acme", call_id=call, lawful_basis="consent",
                                purpose="quality")
    for i in range(int(sys.argv[2])):
        rec.append(0, i * 20, pattern(i, 0))
        rec.append(1, i * 20, pattern(i, 1))
    rec.wait_written()
    print(rec.id, (int(sys.argv[2]) - 1) * 20, flush=True)
    time.sleep(120)
    """
)


def test_sigkilled_writer_leaves_audio_up_to_a_second_before_the_kill(tmp_path):
    env = {**os.environ, "IVR_MASTER_KEY": base64.b64encode(MASTER).decode()}
    env["PYTHONPATH"] = str(ROOT)
    frames = 330  # 6.6 s of audio per track
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(frames)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    try:
        rid, last_ts = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    vault = Vault(tmp_path, master_key=MASTER, fsync=False)
    row = vault.get(rid)
    assert row.status is RecordingStatus.INCOMPLETE
    kept = frames_of(vault, rid)
    last_kept = max(ts for _, ts, _ in kept)
    assert int(last_ts) - last_kept <= 1000 and last_kept >= 5000
    assert kept == [(t, i * 20, pattern(i, t)) for i in range(last_kept // 20 + 1) for t in (0, 1)]

    from ivr.gdpr.recording_files import export_wav

    out = export_wav(vault, rid, tmp_path / "out.wav", actor="test", reason="test")
    assert out.channels == 2 and out.duration_ms >= int(last_ts) - 1000
    vault.close()


# -- no plaintext ---------------------------------------------------------------------------------
def test_nothing_personal_is_written_in_clear(tmp_path):
    canary = b"CANARY-AUDIO-7f3e"
    number = "+46701234567"
    vault = Vault(tmp_path, master_key=MASTER, fsync=False)

    def scan() -> int:
        """Check every file of the data directory and every object (key, metadata, bytes)
        of the vault's object stores; how many blobs (files or objects) there were."""
        needles = [canary, number.encode(), number[1:].encode(), number.encode("utf-16-le")]
        kept = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        for key, (data, metadata) in objects(vault).items():
            kept[key] = key.encode() + json.dumps(metadata).encode() + data
        for where, data in kept.items():
            for needle in needles:
                assert needle not in data, f"{needle!r} found in {where}"
        return sum(1 for where in kept if where.startswith("s3:") or ".rec" in where)

    call = vault.open_call(tenant="acme", platform="test", caller=number)
    rec = vault.start_recording(tenant="acme", call_id=call, lawful_basis="consent", purpose="q")
    payload = canary * 10
    for i in range(300):
        rec.append(i % 2, i * 10, payload)
    rec.wait_written()
    assert scan()  # mid-call: the .part file (or segments) and the WAL hold no clear audio
    rec.close()
    assert scan()
    vault.close()
    scan()  # what closing writes (the data directory's files)


def test_data_files_are_private(tmp_path):
    vault = Vault(tmp_path, environ={}, fsync=False)
    vault.start_recording(tenant="acme", lawful_basis="contract", purpose="x").close()
    vault.close()
    for name in ("master.key", "keyring.json", "catalog.sqlite3"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    for blob in (tmp_path / "blobs").rglob("*.rec"):
        assert stat.S_IMODE(blob.stat().st_mode) == 0o600


# -- keys and catalog -----------------------------------------------------------------------------
def test_master_key_forms():
    key = os.urandom(32)
    assert parse_master_key(key.hex()) == key
    assert parse_master_key(base64.b64encode(key).decode()) == key
    assert parse_master_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    for bad in ("", "short", base64.b64encode(os.urandom(16)).decode(), "zz" * 32):
        with pytest.raises(MasterKeyError, match="IVR_MASTER_KEY"):
            parse_master_key(bad)


def test_master_key_is_not_regenerated_next_to_an_existing_keyring(tmp_path):
    Vault(tmp_path, environ={}, fsync=False).close()
    (tmp_path / "master.key").unlink()
    with pytest.raises(MasterKeyError, match="IVR_MASTER_KEY"):
        load_master_key(tmp_path, environ={})


def test_wrong_master_key_is_named_as_such(tmp_path):
    Vault(tmp_path, master_key=MASTER, fsync=False).close()
    with pytest.raises(MasterKeyError, match="does not open"):
        Vault(tmp_path, master_key=os.urandom(32))


def test_vault_is_not_created_by_readers(tmp_path):
    with pytest.raises(VaultError, match="no vault"):
        Vault(tmp_path / "typo", create=False)
    assert not (tmp_path / "typo").exists()


def test_catalog_migrates_and_refuses_newer_schemas(tmp_path):
    path = tmp_path / "c.sqlite3"
    sqlite3.connect(path).close()
    assert Catalog(path, now_utc).schema_version == SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(CatalogError, match="newer"):
        Catalog(path, now_utc)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="cannot be opened"):
        Catalog(junk, now_utc)


def test_catalog_rejects_unknown_lawful_basis(vault):
    with pytest.raises(VaultError, match="unknown lawful basis 'because'"):
        vault.start_recording(tenant="acme", lawful_basis="because", purpose="x")
    with vault.catalog.transaction() as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO recordings (id, tenant, status, lawful_basis, purpose, started_at, codec,"
            " sample_rate, tracks) VALUES ('r', 't', 'complete', 'because', 'p', 'x', 'pcmu',"
            " 8000, '[]')"
        )


def test_audit_events_form_a_hash_chain(vault):
    for n in range(3):
        vault.audit(actor="test", action="thing.done", target=str(n), detail={"n": n})
    events = vault.catalog.audit_events()
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert json.dumps(events[-1].detail) == '{"n": 2}'


def test_a_dead_writer_is_dead_to_every_process_that_asks_at_once(tmp_path):
    a = Vault(tmp_path, master_key=MASTER, fsync=False)
    b = Vault(tmp_path, master_key=MASTER, fsync=False, recover=False)
    c = Vault(tmp_path, master_key=MASTER, fsync=False, recover=False)
    try:
        assert b.writer_alive(a.writer_id) and c.writer_alive(a.writer_id)
        abandon(a)
        # Another process is in the middle of asking (or recovering) when this one asks: both
        # are told the writer is dead, not "alive" because the other holds the lock.
        held = b._try_lock_writer(a.writer_id)
        assert held is not None
        try:
            assert not c.writer_alive(a.writer_id)
            also = c._try_lock_writer(a.writer_id)
            assert also is not None
            os.close(also)
        finally:
            os.close(held)
    finally:
        b.close()
        c.close()
