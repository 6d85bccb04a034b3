"""Moving a single-node vault (SQLite catalog, local blobs) to a PostgreSQL catalog and an
S3-compatible store (``ivr vault migrate``, docs/migrate.md).

What is copied: every catalog table a vault needs (calls with their sealed caller numbers,
recordings with their wrapped data keys and tombstones, the audit chain entry for entry, the
breach register); not ``processes`` nor ``leases`` (the relay addresses and leases of processes
on the old node). Each
recording's blob goes to the object store as write-once segments cut at chunk boundaries, the
same bytes in the same format (docs/recording-format.md): segments are a transport. A recording
without a blob (erased, discarded, failed) is copied as a row only; nothing of it is sent.

The keyring is not copied: the target's processes open the same keyring (and master key), so
the wrapped data keys, the audit chain's key and the object names stay valid as they are.

Resumable: the target's audit chain is the source's, entry for entry, so a target whose chain is
a prefix of the source's is this vault's migration, left half-way; a recording's row is written
to the target only after its segments are all in the store, so a recording with a row there is
copied, and one without is sent again (every PUT is If-None-Match: a segment already there with
the same bytes counts as sent, different bytes are an error). Every recording is then verified
from the target: its key from the target's row, its bytes from the target's segments, decrypted
end to end and compared with the source's.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.blobs import ByteSource, Segment
from storage.catalog import Catalog, CatalogError, RecordingRow, RecordingStatus
from storage.custody import is_x25519_ref
from storage.errors import VaultError
from storage.format import CHUNK_LENGTH, MAX_CHUNK_PLAINTEXT, TAG_LEN, FormatError
from storage.keys import KEYRING_FILE
from storage.keystore import open_keyring_store
from storage.reader import RecordingReader, read_header
from storage.sql import Row
from storage.vault import Vault

# The catalog's tables a vault needs, in an order foreign keys accept, each with its key.
# Recordings, their segments and the audit chain are copied on their own terms below.
COPIED_TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("calls", ("id",), "started_at, id"),
    ("breaches", ("id",), "opened_at, id"),
    ("breach_measures", ("seq",), "seq"),
)
# Rows about the processes running on the old node and the leases they hold (storage/liveness.py);
# meaningless anywhere else.
SKIPPED_TABLES = ("processes", "leases")
STARTED, MIGRATED, MIGRATED_IN = "vault.migration_started", "vault.migrated", "vault.migrated_in"
_HAS_BLOB = (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE)
_FRAME = struct.Struct(">IQI")  # track, timestamp, payload length: the plaintext digest's framing


class MigrationRefused(VaultError):
    """The migration cannot start: the source is in use, or the target is not this vault's."""


@dataclass(frozen=True, slots=True)
class Problem:
    recording_id: str
    what: str

    def __str__(self) -> str:
        return f"recording {self.recording_id}: {self.what}"


@dataclass(slots=True)
class Report:
    """What one run did. ``copied``: recordings sent in this run; ``present``: found already
    copied (an earlier run); ``rows_only``: recordings without a blob (erased, discarded,
    failed); ``verified``: decrypted from the target and equal to the source;
    ``ciphertext_only``: sealed to a tenant's public key, so compared byte for byte without
    decrypting."""

    target_catalog: str
    target_blobs: str
    state: str = "new"  # new, resumed, complete (migrated before: verified only)
    recordings: int = 0
    copied: int = 0
    present: int = 0
    rows_only: int = 0
    verified: int = 0
    ciphertext_only: int = 0
    bytes_sent: int = 0
    segments_sent: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    audit_entries_copied: int = 0
    audit_entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, Any]:
        return {
            "recordings": self.recordings,
            "copied": self.copied,
            "present": self.present,
            "rows_only": self.rows_only,
            "verified": self.verified,
            "ciphertext_only": self.ciphertext_only,
            "bytes_sent": self.bytes_sent,
            "segments_sent": self.segments_sent,
            **self.tables,
            "audit_entries_copied": self.audit_entries_copied,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "state": self.state,
            "target_catalog": self.target_catalog,
            "target_blobs": self.target_blobs,
            **self.counts(),
            "audit_entries": self.audit_entries,
            "problems": [{"recording_id": p.recording_id, "what": p.what} for p in self.problems],
            "seconds": round(self.seconds, 3),
        }


# (done, total, recording id, what happened to it): called after each recording.
Progress = Callable[[int, int, str, str], None]


def migrate(
    source: Vault,
    target: Vault,
    *,
    actor: str,
    progress: Progress | None = None,
    keyring: str = "the source's keyring (not copied)",
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Copy ``source`` (its catalog and blobs) into ``target`` (a vault opened on the same
    keyring with the target's catalog and object store as ``blob_url``), or carry on with a
    copy left half-way; then verify every recording from the target. Raises MigrationRefused
    before writing anything when the source is in use or the target holds other data.
    ``keyring``: where the target's keyring is, for the audit entries (without a password)."""
    began = clock()
    store_url = getattr(target.blobs, "url", None)
    if not isinstance(store_url, str) or not store_url.startswith("s3://"):
        raise MigrationRefused("the target needs an object store (blob_url s3://bucket/prefix)")
    if source.catalog.kind != "sqlite":
        raise MigrationRefused(
            f"the source's catalog is already on {source.catalog.kind} ({source.catalog.where})"
        )
    report = Report(target.catalog.where, store_url)
    where = {"to_catalog": target.catalog.where, "to_blobs": store_url}
    check_stopped(source, ignore=(target.writer_id,))
    report.state = target_state(source.catalog, target.catalog)
    if report.state != "complete":
        source.audit(actor=actor, action=STARTED, detail=where)
        report.audit_entries_copied += _copy_audit(source, target)
        with target.catalog.transaction() as db:
            for table, key, order in COPIED_TABLES:
                rows = source.catalog.query(f"SELECT * FROM {table} ORDER BY {order}")
                report.tables[table] = target.catalog.put_rows(db, table, key, map(_values, rows))
            target.catalog.follow_identity(db, "breach_measures", "seq")
            target.catalog.follow_identity(db, "audit_events", "seq")
    recordings = source.list()
    report.recordings = len(recordings)
    for n, row in enumerate(recordings, 1):
        what = _one(source, target, row, report, copy=report.state != "complete")
        if progress is not None:
            progress(n, len(recordings), row.id, what)
    if report.ok and report.state != "complete":
        detail = {**where, **report.counts(), "keyring": keyring}
        source.audit(actor=actor, action=MIGRATED, detail=detail)
        report.audit_entries_copied += _copy_audit(source, target)
        head_seq, head = source.catalog.audit_head()
        target.audit(
            actor=actor,
            action=MIGRATED_IN,
            detail={
                **detail,
                "from_catalog": source.catalog.where,
                "source_head": head,
                "source_head_seq": head_seq,
            },
        )
    report.audit_entries = target.catalog.audit_count()
    report.seconds = clock() - began
    return report


def check_stopped(vault: Vault, *, ignore: tuple[str, ...] = ()) -> None:
    """Refuse a vault some other process is writing to: a running service holds its writer
    lock, and its recordings in progress are ``recording``. Dead writers' recordings were
    recovered when ``vault`` was opened."""
    live = [
        path.stem
        for path in sorted((vault.data_dir / "locks").glob("*.lock"))
        if path.stem not in (vault.writer_id, *ignore) and vault.writer_alive(path.stem)
    ]
    if live:
        raise MigrationRefused(
            f"{len(live)} process(es) have the vault open (writer {', '.join(live)}): stop the "
            "service (and every ivr command on this data directory) first"
        )
    recording = [r.id for r in vault.list(status=RecordingStatus.RECORDING)]
    if recording:
        raise MigrationRefused(
            f"{len(recording)} recording(s) are still being written ({', '.join(recording[:5])}):"
            " stop the service first"
        )


def target_state(source: Catalog, target: Catalog) -> str:
    """new (the target holds nothing), resumed (it holds this vault's migration, left
    half-way) or complete; anything else is refused (MigrationRefused)."""
    ours = _links(source)
    theirs = _links(target)
    if not theirs:
        for table in ("calls", "recordings", "breaches"):
            if target.query(f"SELECT 1 FROM {table} LIMIT 1"):
                raise MigrationRefused(
                    f"the target catalog {target.where} already holds {table} (of another "
                    "vault): migrate into an empty database"
                )
        return "new"
    if not ours or theirs[0] != ours[0]:
        raise MigrationRefused(
            f"the target catalog {target.where} holds another vault's data (its audit chain "
            "starts elsewhere): migrate into an empty database"
        )
    common = 0
    while common < min(len(ours), len(theirs)) and ours[common] == theirs[common]:
        common += 1
    if common == len(theirs):
        return "resumed"
    extra = target.query("SELECT action FROM audit_events WHERE seq > ? ORDER BY seq", (common,))
    if common == len(ours) and [r["action"] for r in extra] == [MIGRATED_IN]:
        return "complete"
    if extra and extra[0]["action"] == MIGRATED_IN:
        raise MigrationRefused(
            f"this vault was migrated to {target.where} (its entry {common + 1}), and "
            + (
                "the target has been written to since"
                if len(extra) > 1
                else "the source has been written to since: the two have parted"
            )
        )
    raise MigrationRefused(
        f"the target catalog {target.where} parts from this vault's audit chain at entry "
        f"{common + 1}: it holds other data"
    )


def _links(catalog: Catalog) -> list[tuple[int, str]]:
    rows = catalog.query("SELECT seq, hash FROM audit_events ORDER BY seq")
    return [(r["seq"], r["hash"]) for r in rows]


def copy_keyring(source: Vault, target_catalog_url: str, keyring_url: str) -> str:
    """Copy the source's keyring document, as it is (sealed under the master key), into the key
    store at ``keyring_url``, for the target's nodes to share (docs/key-custody.md): "copied",
    or "present" when the store holds this very document already. Checked first: the source is
    stopped and the target catalog is empty or this vault's (nothing is written otherwise); a
    store holding another keyring is refused. Call it before opening the target vault on the
    store, which would otherwise start a keyring of its own there."""
    check_stopped(source)
    catalog = Catalog(Path(), source.clock, url=target_catalog_url)  # a URL: no file
    try:
        target_state(source.catalog, catalog)
    finally:
        catalog.close()
    document, _ = source.keyring.store.read()
    store = open_keyring_store(keyring_url, source.data_dir, KEYRING_FILE)
    try:
        with store.locked():
            if store.stamp() is not None:
                there, _ = store.read()
                if there == document:
                    return "present"
                raise MigrationRefused(
                    f"the key store {store.where} holds another keyring (or this one changed "
                    "since it was copied): migrate into an empty key store"
                )
            store.write(document)
    finally:
        store.close()
    return "copied"


def _copy_audit(source: Vault, target: Vault) -> int:
    """Append the source's entries the target lacks, verbatim (links, keys and times as they
    are), so that the target's chain is the source's and ``ivr audit verify`` holds there."""
    head, _ = target.catalog.audit_head()
    rows = source.catalog.query("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq", (head,))
    if rows:
        with target.catalog.transaction() as db:
            target.catalog.put_rows(db, "audit_events", ("seq",), map(_values, rows))
            target.catalog.follow_identity(db, "audit_events", "seq")
    return len(rows)


def _values(row: Row) -> dict[str, Any]:
    """A row as column name → value (both databases' rows iterate over their values)."""
    return {name: row[i] for i, name in enumerate(row.keys())}


# -- recordings --------------------------------------------------------------------------------
def _one(source: Vault, target: Vault, row: RecordingRow, report: Report, *, copy: bool) -> str:
    """Copy (unless ``copy`` is False or it is there) and verify one recording; what was done."""
    values = _values(source.catalog.query("SELECT * FROM recordings WHERE id = ?", (row.id,))[0])
    if row.status not in _HAS_BLOB:
        if copy:
            # Nothing stored anywhere: no path to a blob (it would name the old node's disk).
            with target.catalog.transaction() as db:
                target.catalog.put_rows(db, "recordings", ("id",), [{**values, "blob_path": None}])
        report.rows_only += 1
        return f"{row.status.value}: row only"
    try:
        there = _copied(target, row)
        if there:
            report.present += 1
            done = "already copied"
        elif not copy:
            raise VaultError("missing from the target")
        else:
            _send(source, target, row, values, report)
            report.copied += 1
            done = "copied"
        if is_x25519_ref(row.key_ref):
            _compare(source, target, row, decrypt=False)
            report.ciphertext_only += 1
            return f"{done}, ciphertext verified (sealed to the tenant's public key)"
        _compare(source, target, row, decrypt=True)
        report.verified += 1
        return f"{done}, verified"
    except (VaultError, CatalogError, FormatError, OSError) as exc:
        report.problems.append(Problem(row.id, str(exc)))
        return f"FAILED: {exc}"


def _copied(target: Vault, row: RecordingRow) -> bool:
    """Whether the target holds this recording's row, copied whole (a row is written only once
    its segments are all in the store); a row that differs is another recording's."""
    try:
        theirs = target.get(row.id)
    except CatalogError:
        return False
    same = (
        theirs.blob_digest == row.blob_digest
        and theirs.wrapped_dek == row.wrapped_dek
        and theirs.chunk_count == row.chunk_count
        and theirs.blob_size == row.blob_size
    )
    if not same or not target.segments(row.id):
        raise VaultError("the target holds a different row under this id")
    return True


def _send(
    source: Vault, target: Vault, row: RecordingRow, values: dict[str, Any], report: Report
) -> None:
    """Cut the source blob into segments at chunk boundaries, send them, then write the row and
    its segment list in one transaction."""
    assert row.blob_path is not None
    blob = target.blobs.create(row.tenant, row.id)
    try:
        with _source_blob(source, row) as fh:
            for piece in _pieces(fh, row.id):
                blob.write(piece)
        info = blob.finish()
    except BaseException:
        blob.abandon()
        raise
    if (info.sha256, info.size, info.units) != (row.blob_digest, row.blob_size, row.chunk_count):
        raise VaultError(
            f"the source blob ({info.size} bytes, {info.units} chunks) differs from its catalog "
            f"row ({row.blob_size} bytes, {row.chunk_count} chunks, or its digest): not copied"
        )
    segments = [(s.seq, s.key, s.size, s.sha256) for s in info.segments]
    with target.catalog.transaction() as db:
        target.catalog.put_rows(db, "recordings", ("id",), [{**values, "blob_path": info.relpath}])
        target.catalog.set_blob_segments(db, row.id, segments)
    if row.legal_hold:
        # A held recording is held in the target store too where the bucket has Object Lock.
        target.blob_store(info.relpath).set_legal_hold(info.relpath, True)
    report.bytes_sent += info.size
    report.segments_sent += len(segments)


def _source_blob(source: Vault, row: RecordingRow) -> AbstractContextManager[ByteSource]:
    assert row.blob_path is not None
    try:
        return source.blob_store(row.blob_path).open(
            row.blob_path, size=row.blob_size, segments=source.segments(row.id)
        )
    except FileNotFoundError:
        raise VaultError("its blob is missing from the source") from None


def _pieces(fh: ByteSource, recording_id: str) -> Iterator[bytes]:
    """The blob's writes as the vault's writer made them: the header with the first chunk, then
    one chunk each (length prefix and sealed bytes), up to the end; structure only."""
    _, head = read_header(fh, recording_id)
    index = 0
    while raw := fh.read(CHUNK_LENGTH.size):
        (length,) = CHUNK_LENGTH.unpack(raw) if len(raw) == CHUNK_LENGTH.size else (-1,)
        if not TAG_LEN <= length <= MAX_CHUNK_PLAINTEXT + TAG_LEN:
            raise FormatError(recording_id, index, "torn or impossible chunk in the source blob")
        sealed = fh.read(length)
        if len(sealed) < length:
            raise FormatError(recording_id, index, "truncated chunk in the source blob")
        yield head + raw + sealed
        head = b""
        index += 1


# -- verification ------------------------------------------------------------------------------
class _Hashing:
    """A byte source that hashes what is read through it."""

    def __init__(self, inner: ByteSource) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        self.sha256.update(data)
        return data

    def tell(self) -> int:
        return self._inner.tell()

    def drain(self) -> str:
        while self.read(1 << 16):
            pass
        return self.sha256.hexdigest()


@dataclass(frozen=True, slots=True)
class _Digests:
    plaintext: str | None  # None: not decrypted (sealed to a public key)
    ciphertext: str


@contextmanager
def _target_blob(target: Vault, row: RecordingRow) -> Iterator[tuple[RecordingRow, ByteSource]]:
    """The target's row and its blob, read through the target's catalog and store."""
    theirs = target.get(row.id)
    if theirs.blob_path is None:
        raise VaultError("the target's row names no blob")
    segments: list[Segment] = target.segments(row.id)
    try:
        stream = target.blob_store(theirs.blob_path).open(
            theirs.blob_path, size=theirs.blob_size, segments=segments
        )
    except FileNotFoundError:
        raise VaultError("its blob is missing from the target") from None
    with stream as fh:
        yield theirs, fh


def _digests(vault: Vault, row: RecordingRow, fh: ByteSource, *, decrypt: bool) -> _Digests:
    hashing = _Hashing(fh)
    plain: str | None = None
    if decrypt:
        expected = row.chunk_count if row.status is RecordingStatus.INCOMPLETE else None
        reader = RecordingReader(hashing, vault.data_key(row), row.id, expected_chunks=expected)
        digest = hashlib.sha256()
        for chunk in reader.chunks():
            digest.update(struct.pack(">Q?", chunk.index, chunk.final))
            for frame in chunk.frames:
                digest.update(_FRAME.pack(frame.track, frame.timestamp_ms, len(frame.payload)))
                digest.update(frame.payload)
        plain = digest.hexdigest()
    return _Digests(plain, hashing.drain())


def _compare(source: Vault, target: Vault, row: RecordingRow, *, decrypt: bool) -> None:
    """Read the recording from the source and from the target (its key from the target's row,
    its bytes from the target's segments), decrypted end to end unless ``decrypt`` is False
    (sealed to a public key): the same audio, the same bytes, or an error saying which side."""
    with _reading("the source"), _source_blob(source, row) as fh:
        ours = _digests(source, row, fh, decrypt=decrypt)
    with _reading("the target"), _target_blob(target, row) as (theirs_row, fh):
        theirs = _digests(target, theirs_row, fh, decrypt=decrypt)
    _check_same(row, ours, theirs)


@contextmanager
def _reading(side: str) -> Iterator[None]:
    """A damaged blob's error, saying on which side (it already names the recording)."""
    try:
        yield
    except FormatError as exc:
        chunk = "" if exc.chunk is None else f"chunk {exc.chunk}: "
        raise VaultError(f"reading it from {side}: {chunk}{exc.reason}") from None


def _check_same(row: RecordingRow, ours: _Digests, theirs: _Digests) -> None:
    if ours.ciphertext != row.blob_digest:
        raise VaultError("the source blob differs from its catalog digest (damaged at the source)")
    if theirs.plaintext != ours.plaintext:
        raise VaultError("the target decrypts to different audio than the source")
    if theirs.ciphertext != ours.ciphertext:
        raise VaultError("the target's bytes differ from the source's")
