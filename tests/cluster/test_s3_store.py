"""The S3 segment store against a real SeaweedFS: segments, write-once, reading, recovery,
deletion, and what the bucket shows (docs/s3.md)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from storage import lifecycle
from storage.blobs import Segment
from storage.catalog import RecordingStatus
from storage.format import FormatError
from storage.reader import RecordingReader
from storage.s3blobs import S3BlobStore, S3Location, SegmentStream
from storage.vault import Vault, VaultWriteError
from tests.independent_decrypter import decrypt as independent_decrypt

ROOT = Path(__file__).resolve().parents[2]
MASTER = os.urandom(32)


def pattern(i: int, track: int) -> bytes:
    """A payload that tells which frame it is, so lost or shuffled audio shows."""
    return bytes((i * 7 + track * 101 + k) % 256 for k in range(160))


@pytest.fixture
def vault(tmp_path, weed, bucket):
    v = Vault(
        tmp_path / "data",
        master_key=MASTER,
        fsync=False,
        blob_url=f"s3://{bucket}/recordings",
        environ=weed.environ,
    )
    yield v
    v.close()


def frames_of(vault: Vault, rid: str) -> list[tuple[int, int, bytes]]:
    with vault.open_reader(rid) as reader:
        return [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]


def objects(weed, bucket: str) -> dict[str, bytes]:
    client = weed.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def record(vault: Vault, seconds: int = 12, tenant: str = "acme", **kwargs) -> tuple[str, list]:
    rec = vault.start_recording(tenant=tenant, lawful_basis="consent", purpose="quality", **kwargs)
    sent = [(t, i * 20, pattern(i, t)) for i in range(seconds * 50) for t in (0, 1)]
    for f in sent:
        rec.append(*f)
    rec.close()
    return rec.id, sent


def test_second_put_of_a_key_is_refused_with_412(weed, bucket):
    """SeaweedFS honours If-None-Match: * on PutObject (what write-once rests on)."""
    client = weed.client()
    client.put_object(Bucket=bucket, Key="k/00000000", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="k/00000000", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k/00000000")["Body"].read() == b"first"


def test_second_put_is_refused_in_a_versioned_bucket_too(weed):
    """With Object Lock (so versioning) a second PUT would otherwise add a version."""
    name = "l-" + os.urandom(8).hex()
    client = weed.client()
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    client.put_object(Bucket=name, Key="k/00000000", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=name, Key="k/00000000", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert len(client.list_object_versions(Bucket=name)["Versions"]) == 1


def test_a_segment_whose_sha256_does_not_match_is_refused_by_the_server(weed, bucket):
    """The store checks the x-amz-checksum-sha256 each segment is sent with."""
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as refused:
        weed.client().put_object(
            Bucket=bucket, Key="k/00000000", Body=b"segment bytes", ChecksumSHA256=wrong
        )
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert weed.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_store_put_once_accepts_its_own_retry_and_refuses_other_bytes(weed, bucket):
    store = S3BlobStore(weed.client(), S3Location(bucket, "p"), names_key=b"k" * 32)
    try:
        key = store.key(store.relpath("acme", "rec_1"), 0)
        digest = store.put_once(key, b"segment bytes")
        # A retry whose first attempt landed: the same bytes are there, so it succeeded.
        assert store.put_once(key, b"segment bytes") == digest
        with pytest.raises(OSError, match="another writer's segment"):
            store.put_once(key, b"other bytes")
        assert store.get_bytes(key) == b"segment bytes"
    finally:
        store.close()


def test_recording_is_written_as_segments_and_reads_back(vault, weed, bucket):
    rid, sent = record(vault, seconds=12)
    row = vault.get(rid)
    # Twelve chunks: the last second is sealed as the final chunk.
    assert row.status is RecordingStatus.COMPLETE and row.chunk_count == 12
    segments = vault.segments(rid)
    # Five one-second chunks per segment: 5 + 5 + 2 (the last with the final chunk).
    assert [s.seq for s in segments] == [0, 1, 2]
    held = objects(weed, bucket)
    assert sorted(held) == [s.key for s in segments]
    blob = b"".join(held[s.key] for s in segments)
    assert [len(held[s.key]) for s in segments] == [s.size for s in segments]
    assert all(hashlib.sha256(held[s.key]).hexdigest() == s.sha256 for s in segments)
    # The segments concatenated are the recording format, byte for byte.
    assert len(blob) == row.blob_size and hashlib.sha256(blob).hexdigest() == row.blob_digest
    assert independent_decrypt(blob, vault.data_key(row))[1] == sent
    assert frames_of(vault, rid) == sent


def test_a_dropped_or_swapped_segment_is_refused_by_the_reader(vault, weed, bucket):
    """Segments are a transport: the STREAM construction still catches a segment missing or
    out of order, even when each segment is itself intact and its digest matches."""
    rid, _ = record(vault, seconds=12)
    row = vault.get(rid)
    dek = vault.data_key(row)
    segments = vault.segments(rid)
    assert len(segments) == 3
    store = vault.blobs
    assert isinstance(store, S3BlobStore)

    def read_all(order: list[Segment]) -> None:
        stream = SegmentStream(store, order, limit=None)
        try:
            list(RecordingReader(stream, dek, rid).chunks())
        finally:
            stream.close()

    read_all(segments)  # as written: accepted
    with pytest.raises(FormatError, match=r"chunk 5: authentication failed"):
        read_all([segments[0], segments[2]])  # the middle one dropped
    with pytest.raises(FormatError, match=r"chunk 5: authentication failed"):
        read_all([segments[0], segments[2], segments[1]])  # two swapped
    # The same through the vault, with the catalog's list rewritten to swap them.
    db = sqlite3.connect(vault.catalog.path)
    with db:
        db.execute("UPDATE blob_segments SET seq = -1 WHERE recording_id = ? AND seq = 1", (rid,))
        db.execute("UPDATE blob_segments SET seq = 1 WHERE recording_id = ? AND seq = 2", (rid,))
        db.execute("UPDATE blob_segments SET seq = 2 WHERE recording_id = ? AND seq = -1", (rid,))
    db.close()
    with pytest.raises(FormatError, match=r"chunk 5: authentication failed"):
        frames_of(vault, rid)


def test_a_segment_altered_in_the_bucket_is_refused(vault, weed, bucket):
    rid, _ = record(vault, seconds=7)
    segments = vault.segments(rid)
    client = weed.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=segments[1].key)["Body"].read())
    data[-1] ^= 1
    client.delete_object(Bucket=bucket, Key=segments[1].key)
    client.put_object(Bucket=bucket, Key=segments[1].key, Body=bytes(data))
    with pytest.raises(FormatError, match="chunk 6: authentication failed"):
        frames_of(vault, rid)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage.vault import Vault
    from tests.cluster.test_s3_store import pattern
    vault = Vault(Path(sys.argv[1]), fsync=False, blob_url=sys.argv[2])
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(int(sys.argv[3])):
        rec.append(0, i * 20, pattern(i, 0))
        rec.append(1, i * 20, pattern(i, 1))
    print(rec.id, flush=True)
    sys.stdin.read()  # until the test kills it
    """
)


def test_a_killed_writer_keeps_every_uploaded_segment(tmp_path, weed, bucket, s3_env):
    """A writer SIGKILLed mid-call: recovery finalises the recording as incomplete with every
    segment that reached the store; only the segment being filled is lost."""
    env = {**os.environ, "IVR_MASTER_KEY": base64.b64encode(MASTER).decode()}
    env["PYTHONPATH"] = str(ROOT)
    url = f"s3://{bucket}/rec"
    # 12.5 s per track: chunks 0..11 sealed, 0-4 and 5-9 sent as segments 0 and 1, chunks 10
    # and 11 waiting in the segment being filled (chunk 12 still being built).
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), url, "625"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    client = weed.client()
    try:
        rid = child.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while len(client.list_objects_v2(Bucket=bucket).get("Contents", [])) < 2:
            assert time.monotonic() < deadline, "the writer's two segments never arrived"
            time.sleep(0.05)  # polling the bucket for the writer's uploads
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    vault = Vault(tmp_path, master_key=MASTER, fsync=False, blob_url=url, environ=s3_env)
    try:
        row = vault.get(rid)
        assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 10
        assert [s.seq for s in vault.segments(rid)] == [0, 1]
        assert row.duration_ms == 10_000
        kept = frames_of(vault, rid)
        assert kept == [(t, i * 20, pattern(i, t)) for i in range(500) for t in (0, 1)]
        blob = b"".join(objects(weed, bucket)[s.key] for s in vault.segments(rid))
        assert hashlib.sha256(blob).hexdigest() == row.blob_digest
    finally:
        vault.close()


def test_no_personal_data_in_keys_metadata_or_objects(tmp_path, weed, bucket):
    """After a few recordings the bucket holds opaque keys, no user metadata, and ciphertext:
    not the callers' numbers, the call ids, the tenant names in keys, nor the audio."""
    canary = b"CANARY-AUDIO-7f3e" * 10  # 170 bytes of known "PCM"
    numbers = ["+46701234567", "+46709999999"]
    vault = Vault(
        tmp_path,
        master_key=MASTER,
        fsync=False,
        blob_url=f"s3://{bucket}/vault",
        environ=weed.environ,
    )
    names: list[bytes] = []
    try:
        for n, (tenant, number) in enumerate(zip(["acme", "globex"], numbers, strict=True)):
            call = vault.open_call(
                tenant=tenant, platform="twilio", platform_call_id=f"CA{n}f00d", caller=number
            )
            rec = vault.start_recording(
                tenant=tenant, call_id=call, lawful_basis="consent", purpose="quality"
            )
            for i in range(1200):
                rec.append(i % 2, (i // 2) * 20, canary)
            rec.close()
            names += [tenant.encode(), rec.id.encode(), call.encode(), f"CA{n}f00d".encode()]
        client = weed.client()
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert len(listed) == 2 * 3  # 12 s of audio each: three segments per recording
        needles = [canary[:16], *(x.encode() for x in numbers), *(x[1:].encode() for x in numbers)]
        for obj in listed:
            key = obj["Key"]
            assert re.fullmatch(r"vault/[0-9a-f]{32}/[0-9]{8}", key), key
            assert not any(name in key.encode() for name in names)
            head = client.head_object(Bucket=bucket, Key=key)
            assert head.get("Metadata") == {}
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert not any(needle in data for needle in needles), key
            if key.endswith("/00000000"):
                # The one thing in clear: the format's header (docs/recording-format.md), with
                # the tenant and recording ids and no personal data. Nothing of the call.
                header = data[: data.index(b"}") + 1]
                assert not any(n in data for n in names[2::4] + names[3::4])
                assert b"tenant_id" in header
            else:
                assert not any(name in data for name in names)
    finally:
        vault.close()


def test_erasure_shreds_the_key_first_then_deletes_the_segments(vault, weed, bucket):
    rid, _ = record(vault, seconds=6)
    assert len(objects(weed, bucket)) == 2
    store = vault.blobs
    seen = {}
    real_delete = store.delete

    def delete(relpath):  # what the catalog says when the objects go
        seen["row"] = vault.get(rid)
        real_delete(relpath)

    store.delete = delete
    lifecycle.erase(vault, rid, reason="subject asked", actor="test")
    assert seen["row"].status is RecordingStatus.ERASED and seen["row"].wrapped_dek is None
    assert objects(weed, bucket) == {}


def test_objects_left_by_a_failed_deletion_go_with_the_next_sweep(vault, weed, bucket):
    kept, _ = record(vault, seconds=3)
    gone, _ = record(vault, seconds=3)
    store = vault.blobs

    def refuse(relpath):
        raise OSError(5, "object store: unavailable")

    store.delete = refuse
    row = lifecycle.erase(vault, gone, reason="subject asked", actor="test")
    assert row.status is RecordingStatus.ERASED and row.wrapped_dek is None
    del store.delete
    assert len(objects(weed, bucket)) == 2
    assert lifecycle.remove_orphan_blobs(vault) == 1
    assert sorted(objects(weed, bucket)) == [s.key for s in vault.segments(kept)]
    assert frames_of(vault, kept)


def test_discarded_recording_leaves_no_object(vault, weed, bucket):
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(600):
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    assert len(objects(weed, bucket)) == 3  # chunks 0-4, 5-9 and 10 sent as it was
    row = rec.discard(reason="consent withdrawn")
    assert row.status is RecordingStatus.DISCARDED
    assert objects(weed, bucket) == {}


# -- Object Lock: legal holds mirrored ------------------------------------------------------------
@pytest.fixture
def locked_vault(tmp_path, weed):
    """A vault on a bucket created with Object Lock (so versioned)."""
    name = "l-" + os.urandom(8).hex()
    weed.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    v = Vault(
        tmp_path / "data",
        master_key=MASTER,
        fsync=False,
        blob_url=f"s3://{name}/rec",
        environ=weed.environ,
    )
    v.bucket = name  # type: ignore[attr-defined]
    yield v
    v.close()


def versions(weed, bucket: str) -> list[dict]:
    listed = weed.client().list_object_versions(Bucket=bucket)
    return listed.get("Versions", []) + listed.get("DeleteMarkers", [])


def holds(weed, bucket: str) -> dict[str, str]:
    client = weed.client()
    return {
        v["Key"]: client.get_object_legal_hold(
            Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"]
        )["LegalHold"]["Status"]
        for v in versions(weed, bucket)
    }


def test_a_legal_hold_is_mirrored_as_an_s3_legal_hold_and_released_with_it(locked_vault, weed):
    vault, bucket = locked_vault, locked_vault.bucket
    rid, _ = record(vault, seconds=7)
    keys = [s.key for s in vault.segments(rid)]
    assert len(keys) == 2 and {v["Key"] for v in versions(weed, bucket)} == set(keys)
    lifecycle.set_hold(vault, rid, reason="litigation 42", actor="test")
    assert holds(weed, bucket) == dict.fromkeys(keys, "ON")
    # Whoever holds the bucket's keys cannot delete a held version either.
    client = weed.client()
    held = versions(weed, bucket)[0]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=held["Key"], VersionId=held["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    lifecycle.release_hold(vault, rid, reason="settled", actor="test")
    assert holds(weed, bucket) == dict.fromkeys(keys, "OFF")
    lifecycle.erase(vault, rid, reason="retention", actor="test")
    # Every version is gone, not only hidden behind a delete marker.
    assert versions(weed, bucket) == []


def test_a_hold_set_during_the_call_covers_segments_sent_after_it(locked_vault, weed):
    vault, bucket = locked_vault, locked_vault.bucket
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(300):
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    lifecycle.set_hold(vault, rec.id, reason="dispute", actor="test")
    for i in range(300, 700):
        rec.append(0, i * 20, pattern(i, 0))
    rec.close()
    assert len(vault.segments(rec.id)) == 3
    assert holds(weed, bucket) == dict.fromkeys((s.key for s in vault.segments(rec.id)), "ON")
    with pytest.raises(lifecycle.LegalHold):
        lifecycle.erase(vault, rec.id, reason="asked", actor="test")


def test_erasure_of_a_held_object_left_over_is_retried_by_the_sweep(locked_vault, weed):
    """An object whose S3 hold could not be released is kept by the store at erasure; the
    erasure stands (the key is shredded) and the sweep deletes it once it can."""
    vault, bucket = locked_vault, locked_vault.bucket
    rid, _ = record(vault, seconds=3)
    (segment,) = vault.segments(rid)
    client = weed.client()
    client.put_object_legal_hold(Bucket=bucket, Key=segment.key, LegalHold={"Status": "ON"})
    row = lifecycle.erase(vault, rid, reason="retention", actor="test")
    assert row.wrapped_dek is None and len(versions(weed, bucket)) == 1
    assert lifecycle.remove_orphan_blobs(vault) == 0  # still held
    client.put_object_legal_hold(Bucket=bucket, Key=segment.key, LegalHold={"Status": "OFF"})
    assert lifecycle.remove_orphan_blobs(vault) == 1
    assert versions(weed, bucket) == []


# -- a store that fails or stalls -----------------------------------------------------------------
def test_a_store_that_refuses_a_segment_ends_the_recording_incomplete(vault, weed, bucket):
    """The store refuses mid-call (here: a bucket it refuses to write to, a real 400):
    the recording stops taking audio, as on a full disk, and keeps every stored segment."""
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
    for i in range(300):  # chunks 0-4 sealed and sent as segment 0; chunk 5 being built
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    assert len(objects(weed, bucket)) == 1
    vault.blobs.bucket = "x"  # an invalid name (SeaweedFS creates missing buckets on a PUT)
    with pytest.raises(VaultWriteError, match=r"object store: writing .*/00000001"):
        for i in range(300, 1000):  # chunks 5-9 fill segment 1, which the store refuses
            rec.append(0, i * 20, pattern(i, 0))
        rec.wait_written()
        rec.append(0, 1000 * 20, pattern(1000, 0))  # seals a chunk: refused at once
    vault.blobs.bucket = bucket
    row = rec.close()
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 5
    assert "object store" in row.status_reason
    assert [ts for _, ts, _ in frames_of(vault, rec.id)] == [i * 20 for i in range(250)]


class StalledClient:
    """A client whose PutObject waits until released: a store that has stopped answering."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.puts = 0

    def put_object(self, **kwargs):
        self.puts += 1
        self.started.set()
        assert self.release.wait(60)
        return {}

    def close(self) -> None:
        pass


async def test_unsent_audio_is_bounded_while_the_store_stalls():
    """On the event loop (a call), while a segment is in flight the next chunks wait in
    memory, up to twice segment_bytes; past that the recording fails as on a full disk, and
    holds no more."""
    client = StalledClient()
    store = S3BlobStore(
        client, S3Location("b-stalled", ""), names_key=b"k" * 32, segment_bytes=64 * 1024
    )
    blob = store.create("acme", "rec_1")
    try:
        chunk = bytes(16 * 1024)
        blob.write(chunk)  # below a segment: kept
        for _ in range(4):
            blob.write(chunk)  # the fifth chunk fills segment 0: sent, and stalls
        assert client.started.wait(10) and client.puts == 1
        with pytest.raises(VaultWriteError, match="taken no segment for too long"):
            for _ in range(20):
                blob.write(chunk)
        assert blob._pending == 0 and not blob._chunks  # nothing more held
        with pytest.raises(VaultWriteError):
            blob.write(chunk)
    finally:
        client.release.set()
        store.close()


def test_a_writer_off_the_event_loop_waits_for_the_store(tmp_path, weed, bucket):
    """Faster than real time and off the event loop (an import, a tool): the writer waits for
    the store instead of failing, so the unsent audio stays bounded and nothing is lost."""
    store = S3BlobStore(
        weed.client(), S3Location(bucket, "fast"), names_key=b"k" * 32, segment_bytes=32 * 1024
    )
    blob = store.create("acme", "rec_fast")
    peak = 0
    chunks = [os.urandom(16 * 1024) for _ in range(200)]
    try:
        for chunk in chunks:
            blob.write(chunk)
            peak = max(peak, blob._pending)
        info = blob.finish()
    finally:
        store.close()
    assert peak <= 2 * 32 * 1024 + 16 * 1024  # the bound, plus the chunk being added
    assert info.units == 200 and len(info.segments) == 100  # two 16 KiB chunks per segment
    data = b"".join(objects(weed, bucket)[s.key] for s in info.segments)
    assert data == b"".join(chunks)
