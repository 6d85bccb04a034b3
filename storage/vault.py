"""The vault: one object that records, reads, and recovers encrypted recordings.

Order of durability when a recording starts: data key generated → wrapped → catalog row
committed (status ``recording``) → blob file created. So a blob on disk always has its key row,
and a process that dies mid-call leaves a row that the next ``Vault`` to open the data directory
can recover. Every process that writes holds an exclusive lock on its own writer file; a row whose
writer's lock can be taken belongs to a dead process. A writer on another machine, sharing a
PostgreSQL catalog, is dead once its lease has lapsed (storage/liveness.py).

A tenant under public-key custody (storage/custody.py) has its data keys and caller numbers
sealed to its public key: this process can write such a recording but not read it back, and
recovers it structurally (whole chunks kept, unverified) since it has no key to verify with.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from storage.blob_url import S3Location, is_s3_blob
from storage.blobs import (
    DEFAULT_SYNC_INTERVAL,
    BlobInfo,
    BlobStore,
    BlobWriter,
    ByteSource,
    LocalBlobStore,
    Segment,
)
from storage.catalog import (
    LAWFUL_BASES,
    Catalog,
    CatalogError,
    RecordingRow,
    RecordingStatus,
)
from storage.custody import (
    CALLER_INFO,
    PrivateKeyNeeded,
    apply_custody,
    is_x25519_ref,
    key_ref_of,
    open_sealed,
    seal_to,
    sealed_recording,
    unwrap_dek_with,
    wrap_dek_to,
)
from storage.errors import NotReadable, VaultError, VaultWriteError
from storage.files import open_private, parse_utc, private_dir, utc_iso
from storage.format import (
    CHUNK_LENGTH,
    MAX_CHUNK_PLAINTEXT,
    NONCE_PREFIX_LEN,
    TAG_LEN,
    FormatError,
    RecordingHeader,
)
from storage.keys import (
    KEYRING_FILE,
    Keyring,
    caller_aad,
    keyed_hash,
    load_master_key,
    new_dek,
    now_utc,
    open_value,
    seal_value,
    unwrap_dek,
    wrap_dek,
)
from storage.keystore import open_keyring_store
from storage.liveness import DEFAULT_TERMS, LeaseTerms, ProcessLease, Renewer
from storage.pending import PendingWrites
from storage.reader import RecordingReader, read_header
from storage.sql import Connection, Database
from storage.writer import EncryptingWriter

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite3"
BYTES_PER_SAMPLE = {"pcmu": 1, "pcma": 1, "l16": 2}


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    recording_id: str
    status: RecordingStatus
    chunks: int
    duration_ms: int | None  # None: not known (recovered without a key to decrypt with)


class RecordingNotStarted(VaultWriteError):
    """The disk refused a recording at its start. Its row says ``failed`` with ``reason``
    (now, or once the disk takes it: ``Vault.pending``)."""

    def __init__(self, recording_id: str, reason: str) -> None:
        super().__init__(reason)
        self.recording_id = recording_id
        self.reason = reason


def open_catalog(data_dir: Path, clock: Callable[[], datetime], url: str | None) -> Catalog:
    """The vault's catalog: the database at ``url``, or the SQLite file in ``data_dir``."""
    return Catalog(data_dir / CATALOG_FILE, clock, url=url)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class Vault:
    def __init__(
        self,
        data_dir: Path,
        *,
        create: bool = True,
        master_key: bytes | None = None,
        environ: dict[str, str] | None = None,
        clock: Callable[[], datetime] = now_utc,
        chunk_interval_ms: int = 1000,
        fsync: bool = True,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        recover: bool = True,
        public_keys: Mapping[str, bytes | None] | None = None,
        catalog_url: str | None = None,
        blob_url: str | None = None,
        keyring_url: str | None = None,
        lease: LeaseTerms = DEFAULT_TERMS,
    ) -> None:
        """``public_keys``: the configuration's key custody per tenant, a raw X25519 public key
        (public-key custody) or None (local keyring). It is recorded in the data directory, so
        processes opened without it (``None``) seal to the same keys.

        ``catalog_url``: a ``postgresql://`` URL puts the catalog in that database
        (docs/postgresql.md); None keeps it in ``catalog.sqlite3`` in ``data_dir``.

        ``keyring_url``: a ``postgresql://`` URL puts the keyring in that database's key store
        (storage/keystore.py), shared by every node; None keeps it in ``keyring.json`` in
        ``data_dir``.

        ``blob_url``: where new recordings' blobs go; None: ``blobs/`` in the data directory,
        ``s3://bucket/prefix``: an S3-compatible object store (storage/s3blobs.py, endpoint
        and credentials from ``environ``).

        ``lease``: on a PostgreSQL catalog, which processes on other machines share, this
        process holds a lease of these terms while the vault is open (storage/liveness.py);
        on SQLite the writer lock below is all it takes."""
        self.data_dir = data_dir
        self.clock = clock
        self.chunk_interval_ms = chunk_interval_ms
        # A vault's data directory holds its keyring and its catalog, unless they are elsewhere.
        keyring_store = open_keyring_store(keyring_url, data_dir, KEYRING_FILE)
        if keyring_url is not None and (data_dir / KEYRING_FILE).exists():
            keyring_store.close()
            raise VaultError(
                f"{data_dir / KEYRING_FILE} exists but keyring_url names a key store: this data "
                "directory's recordings were sealed under its own keyring. Copy it into the key "
                "store with `ivr vault migrate --to-keyring`, or leave keyring_url out"
            )
        if (
            not create
            and keyring_store.stamp() is None
            and not (catalog_url is None and (data_dir / CATALOG_FILE).exists())
        ):
            keyring_store.close()
            raise VaultError(f"no vault at {data_dir} (nothing recorded there yet?)")
        private_dir(data_dir, tighten=True)
        try:
            master = (
                master_key
                if master_key is not None
                else load_master_key(
                    data_dir, environ=environ, keyring_exists=keyring_store.stamp() is not None
                )
            )
            self.keyring = Keyring(keyring_store, master, clock)
        except BaseException:
            keyring_store.close()
            raise
        self.catalog = open_catalog(data_dir, clock, catalog_url)
        # Writes a call makes along the way, kept while the disk refuses them (storage/pending.py).
        self.pending = PendingWrites(self.catalog)
        key, legacy = self.keyring.audit_key(self.catalog.audit_count)
        self.catalog.audit_key, self.catalog.audit_keyed_after = key, legacy
        self._custody: dict[str, bytes | None] = dict(public_keys or {})
        if public_keys is not None:
            apply_custody(self, public_keys)
        self.local_blobs = LocalBlobStore(
            data_dir / "blobs", fsync=fsync, sync_interval=sync_interval
        )
        # Object stores by location, opened when first needed: the configured one, and any a
        # recording's blob_path names (s3://bucket/prefix/<id>), so that a process opened
        # without the configuration (a CLI command) still reads, holds and deletes them.
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._object_stores: dict[S3Location, BlobStore] = {}
        # Where new recordings go.
        self.blobs: BlobStore = (
            self.local_blobs if blob_url is None else self._object_store(S3Location.parse(blob_url))
        )
        self._locks = data_dir / "locks"
        private_dir(self._locks, tighten=True)
        self.writer_id = secrets.token_hex(8)
        self._writer_lock = open_private(
            self._locks / f"{self.writer_id}.lock", os.O_RDWR | os.O_CREAT
        )
        fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        self.open_recordings: dict[str, Recording] = {}
        # On a catalog other machines share: this process's lease, renewed in a thread on a
        # connection of its own, and a connection for recovery's claims (storage/liveness.py).
        self.lease: ProcessLease | None = None
        self._renewer: Renewer | None = None
        self._claims: Database | None = None
        if self.catalog.kind == "postgresql":
            self.lease = ProcessLease(
                self.catalog.open_side(), self.writer_id, lease, utc_iso(now_utc())
            )
            self.lease.take()
            self._renewer = Renewer(f"lease {self.writer_id}", self.lease.renew, lease.renew_every)
            self._renewer.start()
        if recover:
            self.recover()

    def blob_store(self, blob_path: str) -> BlobStore:
        """The store a recording's ``blob_path`` is in (whatever new recordings use)."""
        if not is_s3_blob(blob_path):
            return self.local_blobs
        try:
            location = S3Location.of_blob(blob_path)
        except ValueError as exc:
            raise NotReadable(str(exc)) from None
        return self._object_store(location)

    def blob_stores(self) -> builtins.list[BlobStore]:
        """The local store and every object store opened so far."""
        return [self.local_blobs, *self._object_stores.values()]

    def _object_store(self, location: S3Location) -> BlobStore:
        store = self._object_stores.get(location)
        if store is None:
            from storage.s3blobs import S3BlobStore, client_from_env  # botocore only here

            store = self._object_stores[location] = S3BlobStore(
                client_from_env(self._environ),
                location,
                names_key=self.keyring.service_key("object names"),
            )
        return store

    def close(self) -> None:
        """Finish what is open and make what is kept; never fails on a recording (a full disk,
        a half-written blob): what cannot be finished now is left to the next start's
        recovery, and said in the log."""
        for rec in list(self.open_recordings.values()):
            try:
                rec.close(reason="the vault closed")
            except Exception:
                log.exception("recording %s: not finalised; recovered at the next start", rec.id)
        if not self.pending.flush():
            log.error(
                "%d catalog write(s) still refused at close (%s): lost; recordings they "
                "would have finished are recovered at the next start, open call rows closed "
                "as orphans",
                len(self.pending),
                self.pending.last_error,
            )
        for store in self.blob_stores():
            store.close()
        if self._renewer is not None:
            self._renewer.stop()
        if self.lease is not None:
            with contextlib.suppress(*self.catalog.write_failures):
                self.lease.release()
            self.lease.database.close()
        if self._claims is not None:
            self._claims.close()
        self.catalog.close()
        self.keyring.close()
        with contextlib.suppress(OSError):
            (self._locks / f"{self.writer_id}.lock").unlink()
        os.close(self._writer_lock)

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------
    def open_call(
        self,
        *,
        tenant: str,
        platform: str,
        platform_call_id: str | None = None,
        line: str | None = None,
        caller: str | None = None,
        defer: bool = False,
    ) -> str:
        """Register a call; ``caller`` (already normalised, e.g. E.164) is stored sealed.

        ``defer``: a call must go on whether or not its row can be written now (the service):
        a row the disk refuses is kept and written later (``self.pending``), and a number that
        cannot be sealed (a new tenant's first key cannot be saved) is not kept at all."""
        call_id = _new_id("call")
        values: dict[str, Any] = {
            "id": call_id,
            "tenant": tenant,
            "platform": platform,
            "platform_call_id": platform_call_id,
            "line": line,
            "started_at": utc_iso(self.clock()),
            "owner": self.writer_id,
        }
        if caller:
            try:
                values.update(self._sealed_caller(tenant, call_id, caller))
            except OSError as exc:
                if not defer:
                    raise
                log.error("call %s: the caller's number is not kept: %s", call_id, exc)
        self.pending.write(
            f"call {call_id} opened",
            lambda db: self.catalog.insert_call(db, **values),
            defer=defer,
        )
        return call_id

    def _sealed_caller(self, tenant: str, call_id: str, caller: str) -> dict[str, Any]:
        public_key = self.public_key_of(tenant)
        if public_key is None:
            key_ref, kek = self.keyring.current(tenant)
            sealed = seal_value(kek, caller_aad(tenant, call_id), caller.encode())
        else:
            key_ref = key_ref_of(public_key)
            sealed = seal_to(
                public_key, caller_aad(tenant, call_id), caller.encode(), info=CALLER_INFO
            )
        return {
            "caller_hash": self.caller_hash(tenant, caller),
            "caller_sealed": sealed,
            "caller_key_ref": key_ref,
        }

    def end_call(self, call_id: str, **values: Any) -> bool:
        """Write a call's end (``ended_at``, ``outcome``, ``end_reason``), now or, while the
        disk refuses it, later: True when it is in the catalog now."""
        return self.pending.write(
            f"call {call_id} ended", lambda db: self.catalog.set_call(db, call_id, **values)
        )

    def caller_hash(self, tenant: str, caller: str) -> str:
        return keyed_hash(self.keyring.lookup_key(tenant), caller)

    def public_key_of(self, tenant: str) -> bytes | None:
        """The public key new data keys of ``tenant`` are sealed to; None: the local keyring."""
        if tenant in self._custody:
            return self._custody[tenant]
        return self.keyring.public_key(tenant)

    def caller_of(self, call_id: str, private_key: Any = None) -> str | None:
        """The caller's number; under public-key custody only with the tenant's private key."""
        row = self.catalog.call(call_id)
        if row is None or row["caller_sealed"] is None:
            return None
        tenant, key_ref = row["tenant"], row["caller_key_ref"]
        aad = caller_aad(tenant, call_id)
        if is_x25519_ref(key_ref):
            if private_key is None:
                raise PrivateKeyNeeded(
                    f"the caller number of call {call_id} is sealed to the tenant's public key "
                    f"{key_ref}; give --private-key"
                )
            opened = open_sealed(
                private_key,
                key_ref,
                aad,
                row["caller_sealed"],
                info=CALLER_INFO,
                what=f"call {call_id}",
            )
            return opened.decode()
        kek = self.keyring.kek(tenant, key_ref)
        return open_value(kek, aad, row["caller_sealed"]).decode()

    # -- recording -------------------------------------------------------------------------
    def start_recording(
        self,
        *,
        tenant: str,
        lawful_basis: str,
        purpose: str,
        call_id: str | None = None,
        policy_id: str | None = None,
        policy_version: int | None = None,
        consent_evidence: dict[str, Any] | None = None,
        codec: str = "pcmu",
        sample_rate: int = 8000,
        tracks: tuple[str, ...] = ("caller", "agent"),
        retention_until: datetime | None = None,
    ) -> Recording:
        basis = str(lawful_basis)  # a str enum passes as its name
        if basis not in LAWFUL_BASES:
            choices = ", ".join(LAWFUL_BASES)
            raise VaultError(f"unknown lawful basis {lawful_basis!r}: one of {choices}")
        if not purpose.strip():
            raise VaultError("a recording needs a purpose")
        recording_id = _new_id("rec")
        header = RecordingHeader(
            recording_id=recording_id,
            tenant_id=tenant,
            codec=codec,
            sample_rate=sample_rate,
            tracks=tracks,
            chunk_interval_ms=self.chunk_interval_ms,
            nonce_prefix=secrets.token_bytes(NONCE_PREFIX_LEN),
        )
        dek = new_dek()
        public_key = self.public_key_of(tenant)
        if public_key is None:
            key_ref, kek = self.keyring.current(tenant)
            wrapped = wrap_dek(kek, tenant, recording_id, key_ref, dek)
        else:
            # Sealed to the tenant's public key: from here on only the controller can unwrap it.
            key_ref, wrapped = wrap_dek_to(public_key, tenant, recording_id, dek)
        relpath = self.blobs.relpath(tenant, recording_id)
        row: dict[str, Any] = {
            "id": recording_id,
            "tenant": tenant,
            "call_id": call_id,
            "status": RecordingStatus.RECORDING.value,
            "lawful_basis": basis,
            "purpose": purpose,
            "policy_id": policy_id,
            "policy_version": policy_version,
            "consent_evidence": json.dumps(consent_evidence, sort_keys=True)
            if consent_evidence is not None
            else None,
            "started_at": utc_iso(self.clock()),
            "codec": codec,
            "sample_rate": sample_rate,
            "tracks": json.dumps(list(tracks)),
            "key_ref": key_ref,
            "wrapped_dek": wrapped,
            "blob_path": relpath,
            "retention_until": utc_iso(retention_until) if retention_until else None,
            "writer_id": self.writer_id,
        }
        try:
            self.pending.write(
                f"recording {recording_id} started",
                lambda db: self.catalog.insert_recording(db, **row),
                defer=False,
            )
        except VaultWriteError as exc:
            # No key row, no blob. The call goes on; its row says why, once the disk takes it.
            reason = f"the recording could not start: {exc}"
            failed = {**row, **self._failed_values(reason), "key_ref": None, "blob_path": None}
            self.pending.write(
                f"recording {recording_id} failed",
                lambda db: self.catalog.insert_recording(db, **failed),
            )
            raise RecordingNotStarted(recording_id, reason) from None
        # The key row is committed (durable) before a single byte of the blob exists.
        try:
            blob = self.blobs.create(tenant, recording_id)
        except OSError as exc:
            reason = f"the recording could not start: {exc.strerror or exc}"
            values = self._failed_values(reason)
            self.pending.write(
                f"recording {recording_id} failed",
                lambda db: self.catalog.update_recording(db, recording_id, **values),
            )
            with contextlib.suppress(OSError):
                self.blobs.delete(relpath)
            raise RecordingNotStarted(recording_id, reason) from None
        writer = EncryptingWriter(header, dek, blob)
        rec = Recording(self, header, writer, blob)
        rec._dek = dek  # to verify what reached the disk if the disk fails; dropped on close
        self.open_recordings[recording_id] = rec
        return rec

    def _failed_values(self, reason: str) -> dict[str, Any]:
        """A recording that holds nothing, and never will: no key, no audio."""
        return {
            "status": RecordingStatus.FAILED.value,
            "status_reason": reason,
            "ended_at": utc_iso(self.clock()),
            "wrapped_dek": None,
            "duration_ms": 0,
            "chunk_count": 0,
        }

    async def astart_recording(self, **kwargs: Any) -> Recording:
        """``start_recording`` for the event loop: the durable key-row commit runs off-loop."""
        return await asyncio.to_thread(lambda: self.start_recording(**kwargs))

    # -- reading ---------------------------------------------------------------------------
    def get(self, recording_id: str) -> RecordingRow:
        return self.catalog.recording(recording_id)

    def list(self, **filters: Any) -> list[RecordingRow]:
        return self.catalog.recordings(**filters)

    def data_key(self, row: RecordingRow, private_key: Any = None) -> bytes:
        """The recording's data key. One sealed to a public key needs its ``private_key``
        (an ``X25519PrivateKey`` or its raw 32 bytes); local keys ignore it."""
        if row.wrapped_dek is None or row.key_ref is None:
            raise NotReadable(f"recording {row.id} has no data key (status {row.status})")
        if is_x25519_ref(row.key_ref):
            if private_key is None:
                raise sealed_recording(row.id, row.key_ref)
            return unwrap_dek_with(private_key, row.tenant, row.id, row.key_ref, row.wrapped_dek)
        kek = self.keyring.kek(row.tenant, row.key_ref)
        return unwrap_dek(kek, row.tenant, row.id, row.key_ref, row.wrapped_dek)

    @contextlib.contextmanager
    def open_reader(self, recording_id: str, private_key: Any = None) -> Iterator[RecordingReader]:
        """A verifying reader over a finished recording's blob (``private_key``: see data_key)."""
        row = self.get(recording_id)
        if row.status not in (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE):
            reason = f" ({row.status_reason})" if row.status_reason else ""
            raise NotReadable(f"recording {recording_id} is {row.status.value}{reason}")
        dek = self.data_key(row, private_key)
        assert row.blob_path is not None
        try:
            stream = self.blob_store(row.blob_path).open(
                row.blob_path, size=row.blob_size, segments=self.segments(recording_id)
            )
        except FileNotFoundError:
            raise NotReadable(f"recording {recording_id}: its blob is missing") from None
        with stream as source:
            expected = row.chunk_count if row.status is RecordingStatus.INCOMPLETE else None
            yield RecordingReader(source, dek, recording_id, expected_chunks=expected)

    def segments(self, recording_id: str) -> builtins.list[Segment]:
        """The object-store segments the catalog lists for a recording ([] for a local file)."""
        return [Segment(*row) for row in self.catalog.blob_segments(recording_id)]

    def audit(self, *, actor: str, action: str, **kwargs: Any) -> None:
        with self.catalog.transaction() as db:
            self.catalog.audit(db, actor=actor, action=action, **kwargs)

    # -- recovery --------------------------------------------------------------------------
    def recover(self) -> builtins.list[RecoveryResult]:  # plain `list` would be Vault.list
        """Finish what dead writers left in ``recording``: keep every sealed chunk.

        A writer that ran on this data directory is dead when its lock is free (exact); one
        that ran elsewhere, on a catalog shared between machines, when its lease has expired,
        and then only its recordings in a shared object store, or in this data directory, are
        ours to finish (a local blob elsewhere is on its machine's disk, which that machine's
        next start recovers). On
        PostgreSQL each recording is claimed ``FOR UPDATE SKIP LOCKED`` first, so that two
        recoverers never both finish one."""
        results = []
        for row in self.catalog.recordings(status=RecordingStatus.RECORDING):
            if row.writer_id == self.writer_id:
                continue
            if not self._ran_here(row.writer_id):
                if row.blob_path is None or (
                    not is_s3_blob(row.blob_path)
                    and self.local_blobs.recovery_source(row.blob_path) is None
                ):
                    continue  # its blob is on another machine's disk
                if self.catalog.lease_alive(row.writer_id or ""):
                    continue
                result = self._recover_claimed(row)
                if result is not None:
                    results.append(result)
                continue
            lock = self._try_lock_writer(row.writer_id)
            if lock is None:
                continue  # its writer is alive
            # One recoverer at a time per dead writer; probes of its liveness (shared locks on
            # its lock file, ``writer_alive``) are never mistaken for the writer meanwhile.
            claim = self._try_lock(f"{row.writer_id}.recovery")
            try:
                result = self._recover_claimed(row) if claim is not None else None
            finally:
                os.close(lock)
                if claim is not None:
                    os.close(claim)
            if result is not None:
                results.append(result)
        self._sweep_dead_locks()
        return results

    def _recover_claimed(self, row: RecordingRow) -> RecoveryResult | None:
        """Recover one recording; on PostgreSQL inside the claim on its row."""
        if self.catalog.kind != "postgresql":
            return self._recover_one(self.get(row.id))
        if self._claims is None:
            self._claims = self.catalog.open_side()
        with self.catalog.claim_recording(self._claims, row.id) as claimed:
            if claimed is None:
                return None  # another recoverer has it, or its writer finished it after all
            db, fresh = claimed
            return self._recover_one(fresh, db=db)

    def _ran_here(self, writer_id: str | None) -> bool:
        """Whether ``writer_id`` wrote on this data directory, so that its lock file tells
        exactly whether it is alive. On SQLite every writer did (the catalog is in here)."""
        if self.catalog.kind == "sqlite" or not writer_id:
            return True
        return (self._locks / f"{writer_id}.lock").exists()

    def writer_alive(self, writer_id: str | None) -> bool:
        """Whether the process that wrote as ``writer_id`` is still running. On this data
        directory: it holds its lock until it dies (the kernel releases it then). Elsewhere,
        on a catalog shared between machines: its lease has not expired (storage/liveness.py).
        This process counts as alive."""
        if writer_id == self.writer_id:
            return True
        if not writer_id:
            return False
        if not self._ran_here(writer_id):
            return self.catalog.lease_alive(writer_id)
        lock = self._try_lock_writer(writer_id)
        if lock is None:
            return True
        os.close(lock)
        return False

    def _try_lock_writer(self, writer_id: str | None) -> int | None:
        """A shared lock on ``writer_id``'s lock file, which its writer holds exclusively
        while it runs: an open descriptor when the writer is dead, None while it lives. Shared,
        so that several processes asking at once all get the same answer."""
        if not writer_id:
            return os.open(os.devnull, os.O_RDONLY)
        return self._try_lock(f"{writer_id}.lock", shared=True)

    def _try_lock(self, name: str, *, shared: bool = False) -> int | None:
        fd = open_private(self._locks / name, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _sweep_dead_locks(self) -> None:
        for path in self._locks.glob("*.lock"):
            if path.stem == self.writer_id:
                continue
            fd = self._try_lock_writer(path.stem)
            if fd is not None:
                if not self.catalog.recordings(status=RecordingStatus.RECORDING):
                    path.unlink(missing_ok=True)
                    (self._locks / f"{path.stem}.recovery").unlink(missing_ok=True)
                os.close(fd)

    def scan_blob(
        self,
        row: RecordingRow,
        source: contextlib.AbstractContextManager[ByteSource],
        dek: bytes | None = None,
    ) -> BlobScan:
        """Verify a blob's chunks from the start up to the first damage or the end."""
        scan = BlobScan()
        duration_ms = 0  # scan.duration_ms may be None (unknown) in general; here it is counted
        try:
            with source as fh:
                key = self.data_key(row) if dek is None else dek
                reader = RecordingReader(fh, key, row.id)
                scan.end_offset = fh.tell()  # just past the header
                for chunk in reader.chunks(stop_at_damage=True):
                    scan.chunks += 1
                    scan.end_offset = chunk.end_offset
                    scan.final = chunk.final
                    for f in chunk.frames:
                        duration_ms = max(duration_ms, f.timestamp_ms + _frame_ms(row, f.payload))
                        scan.duration_ms = duration_ms
        except (FormatError, OSError) as exc:
            log.warning("recording %s: blob unreadable: %s", row.id, exc)
        return scan

    def scan_structure(
        self, row: RecordingRow, source: contextlib.AbstractContextManager[ByteSource]
    ) -> BlobScan:
        """Without the data key: the header, then whole length-prefixed chunks up to a torn or
        impossible one. Nothing is verified (the reader does that later, with the key)."""
        scan = BlobScan(duration_ms=None, verified=False)
        try:
            with source as fh:
                read_header(fh, row.id)
                scan.end_offset = fh.tell()
                while True:
                    raw = fh.read(CHUNK_LENGTH.size)
                    if len(raw) < CHUNK_LENGTH.size:
                        break
                    (length,) = CHUNK_LENGTH.unpack(raw)
                    if not TAG_LEN <= length <= MAX_CHUNK_PLAINTEXT + TAG_LEN:
                        break
                    if len(fh.read(length)) < length:
                        break
                    scan.chunks += 1
                    scan.end_offset = fh.tell()
        except (FormatError, OSError) as exc:
            log.warning("recording %s: blob unreadable: %s", row.id, exc)
        return scan

    def _recover_one(
        self, row: RecordingRow, db: Connection | None = None
    ) -> RecoveryResult | None:
        """``db``: the transaction holding the row's claim, where the result is written."""
        if row.status is not RecordingStatus.RECORDING:
            return None
        assert row.blob_path is not None
        source = self.blob_store(row.blob_path).recovery_source(row.blob_path)
        sealed_to_public = is_x25519_ref(row.key_ref)
        scan = (
            BlobScan()
            if source is None
            else self.scan_structure(row, source.open())
            if sealed_to_public
            else self.scan_blob(row, source.open())
        )
        reason = f"recovered after writer {row.writer_id} stopped"
        if sealed_to_public and scan.chunks:
            reason += "; chunks kept unverified (sealed to the tenant's public key)"
        if scan.chunks == 0:
            status = RecordingStatus.FAILED
            reason += "; no audio was sealed"
        elif scan.final:
            status = RecordingStatus.COMPLETE
        else:
            status = RecordingStatus.INCOMPLETE
        values: dict[str, Any] = {"status": status.value, "status_reason": reason}
        segments: tuple[Segment, ...] = ()
        if scan.chunks:
            assert source is not None
            kept = source.keep(scan.end_offset, scan.chunks)
            segments = kept.segments
            values.update(
                blob_size=kept.size,
                blob_digest=kept.sha256,
                chunk_count=scan.chunks,
                duration_ms=scan.duration_ms,
                ended_at=utc_iso(
                    _add_ms(row.started_at, scan.duration_ms)
                    if scan.duration_ms is not None
                    # Unknown length: the last write to the blob is when the call ended.
                    else source.last_modified()
                ),
            )
        else:
            values.update(wrapped_dek=None, chunk_count=0, duration_ms=0)

        def finish(db: Connection) -> None:
            if self.catalog.update_recording(
                db, row.id, expect_status=RecordingStatus.RECORDING, **values
            ):
                self.catalog.set_blob_segments(db, row.id, _segment_rows(segments))
                self.catalog.audit(
                    db,
                    actor="system",
                    action="recording.recovered",
                    tenant=row.tenant,
                    target=row.id,
                    detail={
                        "status": status.value,
                        "chunks": scan.chunks,
                        "duration_ms": scan.duration_ms,
                        "verified": scan.verified,
                    },
                )

        # Through the kept writes: on a full disk the vault still opens (the service starts
        # degraded) and the row is written once the disk takes it; should this process stop
        # first, the next start finds the row still `recording` and recovers it again. Under
        # a claim, in the claim's transaction (a failure rolls it back: recovered again later).
        if db is not None:
            finish(db)
        elif not self.pending.write(f"recording {row.id} recovered", finish):
            log.warning(
                "recording %s: recovered as %s; its catalog row waits for the disk",
                row.id,
                status.value,
            )
        if not scan.chunks:
            self.blob_store(row.blob_path).delete(row.blob_path)
        log.warning("recording %s recovered as %s (%d chunks)", row.id, status.value, scan.chunks)
        return RecoveryResult(row.id, status, scan.chunks, scan.duration_ms)


@dataclass(slots=True)
class BlobScan:
    chunks: int = 0
    end_offset: int = 0
    duration_ms: int | None = 0
    final: bool = False
    verified: bool = True


class Recording:
    """A recording being written. ``append`` is cheap and never touches the disk itself."""

    def __init__(
        self, vault: Vault, header: RecordingHeader, writer: EncryptingWriter, blob: BlobWriter
    ) -> None:
        self.vault = vault
        self.header = header
        self.id = header.recording_id
        self.tenant = header.tenant_id
        self._writer = writer
        self._blob = blob
        self._bytes_per_ms = BYTES_PER_SAMPLE[header.codec] * header.sample_rate / 1000
        self.row: RecordingRow | None = None
        self._dek: bytes | None = None  # set by Vault.start_recording
        self._final: dict[str, Any] | None = None  # the row's values once the blob is done
        self._segments: tuple[Segment, ...] = ()  # where the blob went, in an object store
        # The hot path is the writer's own method: no extra call layer per frame. A failed
        # disk surfaces as VaultWriteError when the next chunk is sealed.
        self.append = writer.append
        self.append_run = writer.append_run

    @property
    def failed(self) -> bool:
        return self._blob.error is not None

    def take_dropped(self) -> int:
        """Frames ``append`` took that a failed write then lost with their chunk: how many
        since the last call (a write fails once; the writer takes nothing after it)."""
        dropped, self._writer.frames_dropped = self._writer.frames_dropped, 0
        return dropped

    def flush(self) -> None:
        """Seal buffered audio now, e.g. when a stream has gone quiet."""
        if self._blob.error is None:
            self._writer.flush()

    def wait_written(self) -> None:
        """Block until every sealed chunk is on disk (tests and tools; the service never waits)."""
        self._blob.wait()

    def close(
        self,
        *,
        reason: str | None = None,
        consent_evidence: dict[str, Any] | None = None,
        failure: str | None = None,
    ) -> RecordingRow:
        """Seal the final chunk, make the blob durable and mark the row. Idempotent.

        ``failure``: the audio the recording should hold did not all arrive (a media stream
        that never connected or broke): it is marked incomplete, or failed when nothing was
        stored, with that reason, not complete."""
        if self.row is not None:
            return self.row
        vault = self.vault
        if self._final is None:  # the blob's part, done once even if the catalog fails after
            self._final = self._finish_blob(reason, failure)
        values = dict(self._final)
        if consent_evidence is not None:
            values["consent_evidence"] = json.dumps(consent_evidence, sort_keys=True)
        segments = _segment_rows(self._segments)
        applied = [True]

        def finalise(db: Connection) -> None:
            # Only a recording still being written: another process that took this one for
            # dead (its lease lapsed while it was cut off) may have finished it as incomplete
            # already, and what it kept stays as it kept it.
            applied[0] = vault.catalog.update_recording(
                db, self.id, expect_status=RecordingStatus.RECORDING, **values
            )
            if applied[0]:
                vault.catalog.set_blob_segments(db, self.id, segments)

        written = vault.pending.write(f"recording {self.id} finalised", finalise)
        if written and not applied[0]:
            log.error(
                "recording %s: already finished by another process (this one was taken for "
                "dead: its lease lapsed); left as that one finished it",
                self.id,
            )
        elif values["status"] == RecordingStatus.FAILED.value:
            with contextlib.suppress(OSError):
                vault.blob_store(self._blob.relpath).delete(self._blob.relpath)
        vault.open_recordings.pop(self.id, None)
        self.row = vault.get(self.id) if written else _as_written(vault.get(self.id), values)
        if self.row.legal_hold and self._segments:
            # Held while it was being written: the segments sent since are held in the store too.
            try:
                vault.blob_store(self._blob.relpath).set_legal_hold(self._blob.relpath, True)
            except OSError as exc:
                log.error(
                    "recording %s: its later segments are not held in the store: %s", self.id, exc
                )
        if not written:
            log.error(
                "recording %s: %s, but its row waits for the disk to take it",
                self.id,
                values["status"],
            )
        return self.row

    def _finish_blob(self, reason: str | None, failure: str | None) -> dict[str, Any]:
        """Seal the final chunk and make the blob durable, or keep what reached the disk; the
        row's values to match."""
        vault = self.vault
        try:
            if self._blob.error is None:
                self._writer.close()
            info: BlobInfo = self._blob.finish()
            status = RecordingStatus.COMPLETE
            chunks = info.units
            if failure is not None:
                stored = self._writer.last_frame is not None  # a final seal holds no audio
                status = RecordingStatus.INCOMPLETE if stored else RecordingStatus.FAILED
                reason = f"{failure}; {reason}" if reason else failure
        except VaultWriteError as exc:
            info = self._blob.abandon()
            chunks = info.units
            status = RecordingStatus.INCOMPLETE if chunks else RecordingStatus.FAILED
            reason = f"blob write failed: {exc.strerror or exc}"
            log.error("recording %s: %s; kept %d sealed chunks", self.id, reason, chunks)
        last = self._writer.last_frame
        duration = last[0] + int(last[1] / self._bytes_per_ms) if last else 0
        if status is RecordingStatus.INCOMPLETE:
            # Only what reached the disk counts; measure it rather than trust the appends.
            scan = vault.scan_blob(vault.get(self.id), self._blob.open_kept(), dek=self._dek)
            duration = scan.duration_ms or 0
        self._dek = None
        self._segments = info.segments
        values: dict[str, Any] = {
            "status": status.value,
            "status_reason": reason,
            "ended_at": utc_iso(vault.clock()),
            "duration_ms": duration if chunks else 0,
            "blob_size": info.size,
            "blob_digest": info.sha256,
            "chunk_count": chunks,
        }
        if status is RecordingStatus.FAILED:
            values["wrapped_dek"] = None
            self._segments = ()  # deleted with the blob
        return values

    async def aclose(
        self,
        *,
        reason: str | None = None,
        consent_evidence: dict[str, Any] | None = None,
        failure: str | None = None,
    ) -> RecordingRow:
        return await asyncio.to_thread(
            lambda: self.close(reason=reason, consent_evidence=consent_evidence, failure=failure)
        )

    async def adiscard(
        self, *, reason: str, consent_evidence: dict[str, Any] | None = None
    ) -> RecordingRow:
        return await asyncio.to_thread(
            lambda: self.discard(reason=reason, consent_evidence=consent_evidence)
        )

    def discard(
        self,
        *,
        reason: str,
        actor: str = "system",
        consent_evidence: dict[str, Any] | None = None,
    ) -> RecordingRow:
        """Throw the recording away (e.g. consent withdrawn): key destroyed, blob deleted."""
        if self.row is not None:
            raise VaultError(f"recording {self.id} is already {self.row.status.value}")
        vault = self.vault
        self._writer.abort()
        self._dek = None
        self._blob.discard()
        values: dict[str, Any] = {
            "status": RecordingStatus.DISCARDED.value,
            "status_reason": reason,
            "ended_at": utc_iso(vault.clock()),
            "wrapped_dek": None,
            "duration_ms": 0,
            "chunk_count": 0,
        }
        if consent_evidence is not None:
            values["consent_evidence"] = json.dumps(consent_evidence, sort_keys=True)

        def apply(db: Connection) -> None:
            vault.catalog.update_recording(db, self.id, **values)
            vault.catalog.audit(
                db,
                actor=actor,
                action="recording.discarded",
                tenant=self.tenant,
                target=self.id,
                detail={"reason": reason},
            )

        # The audio is gone with the blob below; the key goes with the row, now or, while the
        # disk refuses it, when it takes it again.
        written = vault.pending.write(f"recording {self.id} discarded", apply)
        with contextlib.suppress(OSError):
            vault.blob_store(self._blob.relpath).delete(self._blob.relpath)
        vault.open_recordings.pop(self.id, None)
        self.row = vault.get(self.id) if written else _as_written(vault.get(self.id), values)
        return self.row


def _as_written(row: RecordingRow, values: Mapping[str, Any]) -> RecordingRow:
    """``row`` as it will read once ``values`` (catalog columns, kept for later) are written."""
    fields = {k: v for k, v in values.items() if k in RecordingRow.__dataclass_fields__}
    if "status" in fields:
        fields["status"] = RecordingStatus(fields["status"])
    if "consent_evidence" in fields:
        evidence = fields["consent_evidence"]
        fields["consent_evidence"] = json.loads(evidence) if evidence else None
    return dataclasses.replace(row, **fields)


def _segment_rows(segments: tuple[Segment, ...]) -> builtins.list[tuple[int, str, int, str]]:
    return [(s.seq, s.key, s.size, s.sha256) for s in segments]


def _frame_ms(row: RecordingRow, payload: bytes) -> int:
    return int(len(payload) * 1000 / (BYTES_PER_SAMPLE.get(row.codec, 1) * row.sample_rate))


def _add_ms(iso: str, ms: int) -> datetime:
    return parse_utc(iso) + timedelta(milliseconds=ms)


__all__ = [
    "CatalogError",
    "NotReadable",
    "Recording",
    "RecordingNotStarted",
    "RecordingStatus",
    "RecoveryResult",
    "Vault",
    "VaultError",
    "VaultWriteError",
]
