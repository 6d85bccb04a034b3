"""The catalog: calls, recordings and audit events in SQLite (WAL, versioned schema) or, given
a ``postgresql://`` URL, in PostgreSQL (docs/postgresql.md). The SQL below is written once, in
the portable subset both read; storage/sql.py holds what differs.

Personal data never appears here in clear: a caller is a keyed hash (to find their calls) and
a sealed number (to show it to someone entitled). The wrapped data key of a recording lives
here and only here, so deleting that one value makes the recording unreadable in this data
directory; copies of this file (backups; on PostgreSQL also its WAL) keep it until its key
version is retired (storage/retirement.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from storage.files import utc_iso
from storage.liveness import lease_alive
from storage.sql import Connection, Database, Row, SqliteDatabase, driver_message

# A recording's GDPR Art. 6(1) lawful basis, by name. What each basis means, and which consent
# flow it admits, is the application's business (ivr.policy.LawfulBasis; tests/test_lawful_basis.py
# keeps the two equal): the catalog only checks that a recording names one of these, in the order
# existing databases carry in their CHECK constraint.
LAWFUL_BASES: tuple[str, ...] = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
)


class RecordingStatus(StrEnum):
    RECORDING = "recording"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    DISCARDED = "discarded"
    ERASED = "erased"
    FAILED = "failed"


class CatalogError(Exception):
    pass


class UnknownRecording(CatalogError):
    def __init__(self, recording_id: str) -> None:
        super().__init__(f"no recording with id {recording_id!r}")
        self.recording_id = recording_id


def _check(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# Each entry moves the schema one version up; the database records how far it has come (SQLite:
# PRAGMA user_version; PostgreSQL: a table). Written in SQLite's words; PostgreSQL reads them
# through storage/postgres.py's type translation, so both reach the same tables and columns.
MIGRATIONS: Sequence[str] = (
    f"""
    CREATE TABLE calls (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        platform TEXT NOT NULL,
        platform_call_id TEXT,
        line TEXT,
        caller_hash TEXT,
        caller_sealed BLOB,
        caller_key_ref TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT
    );
    CREATE INDEX calls_by_caller ON calls (tenant, caller_hash);
    CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        call_id TEXT REFERENCES calls (id),
        status TEXT NOT NULL CHECK (status IN ({_check(RecordingStatus)})),
        status_reason TEXT,
        lawful_basis TEXT NOT NULL CHECK (lawful_basis IN ({_check(LAWFUL_BASES)})),
        purpose TEXT NOT NULL,
        policy_id TEXT,
        policy_version INTEGER,
        consent_evidence TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        duration_ms INTEGER,
        codec TEXT NOT NULL,
        sample_rate INTEGER NOT NULL,
        tracks TEXT NOT NULL,
        key_ref TEXT,
        wrapped_dek BLOB,
        blob_path TEXT,
        blob_size INTEGER,
        blob_digest TEXT,
        chunk_count INTEGER,
        retention_until TEXT,
        legal_hold INTEGER NOT NULL DEFAULT 0,
        legal_hold_reason TEXT,
        writer_id TEXT
    );
    CREATE INDEX recordings_by_tenant ON recordings (tenant, started_at);
    CREATE INDEX recordings_by_status ON recordings (status);
    CREATE INDEX recordings_by_call ON recordings (call_id);
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        tenant TEXT,
        target TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    # 2: erasure leaves a tombstone: the recording row, scrubbed, says when and why.
    """
    ALTER TABLE recordings ADD COLUMN erased_at TEXT;
    ALTER TABLE recordings ADD COLUMN erasure_reason TEXT;
    ALTER TABLE calls ADD COLUMN erased_at TEXT;
    CREATE INDEX recordings_by_retention ON recordings (status, retention_until);
    """,
    # 3: the breach register (Art. 33/34): one row per breach, its assessment as JSON.
    """
    CREATE TABLE breaches (
        id TEXT PRIMARY KEY,
        detected_at TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        deadline TEXT NOT NULL,
        description TEXT NOT NULL,
        scope TEXT NOT NULL,
        assessment TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        closed_at TEXT,
        summary TEXT
    );
    """,
    # 4: audit entries say how their link was made; new ones are HMACs with the vault's key.
    """
    ALTER TABLE audit_events ADD COLUMN alg TEXT NOT NULL DEFAULT 'sha256';
    """,
    # 5: why a call ended, in words without personal data ("caller hung up", "set-up failed:
    # ..."), and a way to find the calls a dead process left open.
    """
    ALTER TABLE calls ADD COLUMN end_reason TEXT;
    CREATE INDEX calls_open ON calls (platform, ended_at);
    """,
    # 6: the measures taken about a breach, as the operator entered them, each with when and
    # by whom (the Art. 33(3)(d) content; the register never words them itself).
    """
    CREATE TABLE breach_measures (
        seq INTEGER PRIMARY KEY,
        breach_id TEXT NOT NULL REFERENCES breaches (id),
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX breach_measures_by_breach ON breach_measures (breach_id, seq);
    """,
    # 7: a recording kept in an object store is a run of write-once segment objects
    # (storage/s3blobs.py, docs/s3.md): each one's key, size and SHA-256, in order.
    """
    CREATE TABLE blob_segments (
        recording_id TEXT NOT NULL REFERENCES recordings (id),
        seq INTEGER NOT NULL,
        object_key TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (recording_id, seq)
    );
    """,
    # 8: several processes on one catalog. A call is held by the process that answered it
    # (``owner``: that process's vault writer id); a request for the call that reaches another
    # process is relayed to the holder, at the address it registered in ``processes``.
    """
    ALTER TABLE calls ADD COLUMN owner TEXT;
    CREATE INDEX calls_by_platform_id ON calls (platform, platform_call_id);
    CREATE INDEX calls_open_held ON calls (ended_at, owner);
    CREATE TABLE processes (
        writer_id TEXT PRIMARY KEY,
        relay_url TEXT NOT NULL,
        started_at TEXT NOT NULL
    );
    """,
    # 9: several machines on one catalog (storage/liveness.py). A process is alive while its
    # lease has not expired, by the database's clock; ``leases`` holds the leases that elect
    # one holder among every node (the background jobs). A process with no relay address yet
    # has relay_url ''.
    """
    ALTER TABLE processes ADD COLUMN lease_expires_at TEXT;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class RecordingRow:
    id: str
    tenant: str
    call_id: str | None
    status: RecordingStatus
    status_reason: str | None
    lawful_basis: str  # one of LAWFUL_BASES
    purpose: str
    policy_id: str | None
    policy_version: int | None
    consent_evidence: dict[str, Any] | None
    started_at: str
    ended_at: str | None
    duration_ms: int | None
    codec: str
    sample_rate: int
    tracks: tuple[str, ...]
    key_ref: str | None
    wrapped_dek: bytes | None = field(repr=False)
    blob_path: str | None
    blob_size: int | None
    blob_digest: str | None
    chunk_count: int | None
    retention_until: str | None
    legal_hold: bool
    legal_hold_reason: str | None
    writer_id: str | None
    erased_at: str | None = None
    erasure_reason: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> RecordingRow:
        evidence = row["consent_evidence"]
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            call_id=row["call_id"],
            status=RecordingStatus(row["status"]),
            status_reason=row["status_reason"],
            lawful_basis=str(row["lawful_basis"]),
            purpose=row["purpose"],
            policy_id=row["policy_id"],
            policy_version=row["policy_version"],
            consent_evidence=json.loads(evidence) if evidence else None,
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            duration_ms=row["duration_ms"],
            codec=row["codec"],
            sample_rate=row["sample_rate"],
            tracks=tuple(json.loads(row["tracks"])),
            key_ref=row["key_ref"],
            wrapped_dek=row["wrapped_dek"],
            blob_path=row["blob_path"],
            blob_size=row["blob_size"],
            blob_digest=row["blob_digest"],
            chunk_count=row["chunk_count"],
            retention_until=row["retention_until"],
            legal_hold=bool(row["legal_hold"]),
            legal_hold_reason=row["legal_hold_reason"],
            writer_id=row["writer_id"],
            erased_at=row["erased_at"],
            erasure_reason=row["erasure_reason"],
        )

    def public(self) -> dict[str, Any]:
        """What a listing may show: everything except key material and internal paths."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "call_id": self.call_id,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "lawful_basis": self.lawful_basis,
            "purpose": self.purpose,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "consent_evidence": self.consent_evidence,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "tracks": list(self.tracks),
            "key_ref": self.key_ref,
            "blob_size": self.blob_size,
            "blob_digest": self.blob_digest,
            "chunk_count": self.chunk_count,
            "retention_until": self.retention_until,
            "legal_hold": self.legal_hold,
            "legal_hold_reason": self.legal_hold_reason,
            "erased_at": self.erased_at,
            "erasure_reason": self.erasure_reason,
        }


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    at: str
    actor: str
    action: str
    tenant: str | None
    target: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    alg: str = "sha256"


KEYED, UNKEYED = "hmac-sha256", "sha256"


def audit_hash(
    prev_hash: str,
    at: str,
    actor: str,
    action: str,
    tenant: str | None,
    target: str | None,
    detail: dict[str, Any],
    key: bytes | None = None,
) -> str:
    """The link of one entry: an HMAC with the vault's audit key (``key``), or, for entries
    written before the chain was keyed, a plain SHA-256."""
    body = json.dumps(
        [prev_hash, at, actor, action, tenant, target, detail],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    if key is not None:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def open_database(url: str | None, sqlite_path: Path) -> Database:
    """The catalog's database: PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL,
    else the SQLite file ``sqlite_path``."""
    if url is None:
        return SqliteDatabase(sqlite_path)
    if url.startswith(("postgresql://", "postgres://")):
        from storage.postgres import PostgresDatabase

        return PostgresDatabase(url)
    raise ValueError(
        "catalog_url must start with postgresql:// (leave it out for the embedded SQLite file)"
    )


class Catalog:
    """One catalog database, safe to share between threads of a process, between processes and,
    on PostgreSQL, between nodes: the SQLite file ``path``, or the PostgreSQL database at
    ``url``."""

    def __init__(
        self, path: Path, clock: Callable[[], datetime], *, url: str | None = None
    ) -> None:
        self.path = path
        self._url = url
        self._clock = clock
        # Set by the vault once the keyring is open: entries after ``audit_keyed_after`` must
        # be HMACs with ``audit_key``.
        self.audit_key: bytes | None = None
        self.audit_keyed_after = 0
        where = path if url is None else "postgresql"
        try:
            self._database: Database = open_database(url, path)
        except ImportError as exc:
            raise CatalogError(f"catalog cannot be opened: {exc}") from None
        except Exception as exc:
            if url is not None and not isinstance(exc, ValueError):
                from storage.postgres import redacted

                raise CatalogError(
                    f"catalog {redacted(url)} cannot be opened: {driver_message(exc, url)}"
                ) from None
            raise CatalogError(f"catalog {where} cannot be opened: {exc}") from None
        self.kind = self._database.kind
        self.where = self._database.where
        # What a write raises when the database cannot take it now (storage/pending.py).
        self.write_failures = self._database.write_failures
        try:
            self._migrate()
        except self._database.open_failures as exc:
            self._database.close()
            raise CatalogError(f"catalog {self.where} cannot be opened: {exc}") from None
        except BaseException:
            self._database.close()
            raise

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = self._database.schema_version(db)
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.where} has schema version {version}, newer than this "
                    f"program's {SCHEMA_VERSION}: upgrade ivr"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(self._database.migration(statement))
                self._database.set_schema_version(db, number + 1)

    @property
    def schema_version(self) -> int:
        with self.transaction() as db:
            return self._database.schema_version(db)

    @contextmanager
    def transaction(self, *, shared: bool = False) -> Iterator[Connection]:
        """One write transaction, committed when the body returns. Whatever fails in it, the
        COMMIT included (a full disk can refuse it), leaves no transaction open. ``shared``:
        the body writes only rows of its own call or recording, so on PostgreSQL other such
        transactions run beside it; every other transaction has the catalog to itself among
        writers, as on SQLite (storage/postgres.py)."""
        with self._database.transaction(shared=shared) as db:
            yield db

    def close(self) -> None:
        self._database.close()

    def open_side(self) -> Database:
        """Another connection to the same database, for work that must not wait behind this
        catalog's own (a lease's renewals, a recovery's claim held while a blob is read); the
        caller closes it."""
        return open_database(self._url, self.path)

    def checkpoint(self) -> None:
        """After an erasure: what the database can do so that the erased values' old bytes do
        not linger in its own files (SQLite: the WAL folded in and emptied; PostgreSQL: the
        dead row versions vacuumed). What stays in backups is in docs/postgresql.md."""
        self._database.after_erasure(("recordings", "calls"))

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """The rows of one read in the catalog's SQL (``?`` or ``:name`` parameters), on
        either database: for tools and tests that look at what the catalog holds."""
        return self._database.fetchall(sql, params)

    def put_rows(
        self, db: Connection, table: str, key: Sequence[str], rows: Iterable[dict[str, Any]]
    ) -> int:
        """Insert ``rows`` of ``table`` with the values they bring, each replacing the row of the
        same ``key`` if there is one (a copy made again, storage/migrate.py); the count."""
        count = 0
        for values in rows:
            columns = list(values)
            sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
            db.execute(
                f"INSERT INTO {table} ({', '.join(columns)})"
                f" VALUES ({', '.join(':' + c for c in columns)})"
                f" ON CONFLICT ({', '.join(key)}) DO "
                + (f"UPDATE SET {sets}" if sets else "NOTHING"),
                values,
            )
            count += 1
        return count

    def follow_identity(self, db: Connection, table: str, column: str) -> None:
        """After rows brought their own ``column`` values: new rows continue after them."""
        self._database.follow_identity(db, table, column)

    # -- breaches ------------------------------------------------------------------------------
    def breach(self, breach_id: str) -> Row | None:
        row: Row | None = self._database.fetchone(
            "SELECT * FROM breaches WHERE id = ?", (breach_id,)
        )
        return row

    def breaches(self) -> list[Row]:
        return self._database.fetchall("SELECT * FROM breaches ORDER BY opened_at, id")

    def breach_measures(self, breach_id: str) -> list[Row]:
        return self._database.fetchall(
            "SELECT * FROM breach_measures WHERE breach_id = ? ORDER BY seq", (breach_id,)
        )

    def calls_with_caller(
        self,
        *,
        tenant: str | None = None,
        started_from: str | None = None,
        started_to: str | None = None,
        caller_key_ref: str | None = None,
    ) -> list[Row]:
        """Calls that still hold a caller's number (sealed, or its keyed hash), narrowed by
        tenant, start time (inclusive bounds) and the key the number is sealed under."""
        sql = "SELECT * FROM calls WHERE (caller_hash IS NOT NULL OR caller_sealed IS NOT NULL)"
        params: list[Any] = []
        for clause, value in (
            ("tenant = ?", tenant),
            ("started_at >= ?", started_from),
            ("started_at <= ?", started_to),
            ("caller_key_ref = ?", caller_key_ref),
        ):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        return self._database.fetchall(sql + " ORDER BY started_at, id", params)

    def calls(self, call_ids: Sequence[str]) -> list[Row]:
        if not call_ids:
            return []
        marks = ",".join("?" for _ in call_ids)
        return self._database.fetchall(f"SELECT * FROM calls WHERE id IN ({marks})", list(call_ids))

    def calls_by_caller(self, tenant: str, caller_hash: str) -> list[Row]:
        return self._database.fetchall(
            "SELECT * FROM calls WHERE tenant = ? AND caller_hash = ? ORDER BY started_at",
            (tenant, caller_hash),
        )

    def recordings_of_call(self, call_id: str) -> list[RecordingRow]:
        rows = self._database.fetchall(
            "SELECT * FROM recordings WHERE call_id = ? ORDER BY started_at", (call_id,)
        )
        return [RecordingRow.from_row(r) for r in rows]

    def due_for_retention(self, now: str) -> list[RecordingRow]:
        """Finished recordings whose retention date has passed, held ones included."""
        rows = self._database.fetchall(
            "SELECT * FROM recordings WHERE status IN ('complete', 'incomplete')"
            " AND retention_until IS NOT NULL AND retention_until <= ?"
            " ORDER BY retention_until, id",
            (now,),
        )
        return [RecordingRow.from_row(r) for r in rows]

    # -- calls ---------------------------------------------------------------------------------
    def insert_call(self, db: Connection, **values: Any) -> None:
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        db.execute(f"INSERT INTO calls ({columns}) VALUES ({marks})", values)

    def update_call(self, call_id: str, **values: Any) -> None:
        with self.transaction() as db:
            self.set_call(db, call_id, **values)

    def set_call(self, db: Connection, call_id: str, **values: Any) -> None:
        """Update one call row inside the caller's transaction."""
        sets = ", ".join(f"{k} = :{k}" for k in values)
        db.execute(f"UPDATE calls SET {sets} WHERE id = :id", {**values, "id": call_id})

    def open_calls(self, platform: str, started_before: str) -> list[Row]:
        """Calls on ``platform`` that began before ``started_before`` and never ended: what a
        process that died left behind."""
        return self._database.fetchall(
            "SELECT * FROM calls WHERE platform = ? AND ended_at IS NULL AND started_at < ?"
            " ORDER BY started_at",
            (platform, started_before),
        )

    def open_calls_held(self) -> list[Row]:
        """Calls not ended that a process holds (``owner`` set), on every platform."""
        return self._database.fetchall(
            "SELECT * FROM calls WHERE ended_at IS NULL AND owner IS NOT NULL ORDER BY started_at"
        )

    def call_of(self, platform: str, platform_call_id: str) -> Row | None:
        """The newest call with this platform id (a platform reuses none, but a retried
        webhook may have opened two)."""
        row: Row | None = self._database.fetchone(
            "SELECT * FROM calls WHERE platform = ? AND platform_call_id = ?"
            " ORDER BY started_at DESC LIMIT 1",
            (platform, platform_call_id),
        )
        return row

    def call(self, call_id: str) -> Row | None:
        row: Row | None = self._database.fetchone("SELECT * FROM calls WHERE id = ?", (call_id,))
        return row

    # -- processes -----------------------------------------------------------------------------
    def register_process(self, db: Connection, writer_id: str, relay_url: str, at: str) -> None:
        """Where the process ``writer_id`` takes relayed requests, inside the caller's
        transaction (docs/cluster.md)."""
        db.execute(
            "INSERT INTO processes (writer_id, relay_url, started_at) VALUES (?, ?, ?)"
            " ON CONFLICT (writer_id) DO UPDATE SET relay_url = excluded.relay_url",
            (writer_id, relay_url, at),
        )

    def relay_url(self, writer_id: str) -> str | None:
        """Where ``writer_id`` takes relayed requests; None if it registered no address."""
        row = self._database.fetchone(
            "SELECT relay_url FROM processes WHERE writer_id = ?", (writer_id,)
        )
        return str(row[0]) if row and row[0] else None

    def lease_alive(self, writer_id: str) -> bool:
        """Whether ``writer_id`` holds an unexpired lease, by the database's clock."""
        return lease_alive(self._database, writer_id)

    def forget_expired_processes(self, older_than_seconds: float) -> int:
        """Remove the rows of processes whose lease expired more than ``older_than_seconds``
        ago and that hold nothing open (no call, no recording being written): processes that
        died. How many. A process that was only cut off finds its row gone at its next renewal
        and registers again (storage/liveness.py)."""
        cutoff = self._database.clock_sql()
        with self.transaction(shared=True) as db:
            return int(
                db.execute(
                    "DELETE FROM processes WHERE lease_expires_at IS NOT NULL"
                    f" AND lease_expires_at < {cutoff}"
                    " AND writer_id NOT IN (SELECT writer_id FROM recordings"
                    "  WHERE status = 'recording' AND writer_id IS NOT NULL)"
                    " AND writer_id NOT IN (SELECT owner FROM calls"
                    "  WHERE ended_at IS NULL AND owner IS NOT NULL)",
                    (-float(older_than_seconds),),
                ).rowcount
            )

    def forget_process(self, writer_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM processes WHERE writer_id = ?", (writer_id,))

    # -- recordings ----------------------------------------------------------------------------
    def insert_recording(self, db: Connection, **values: Any) -> None:
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        db.execute(f"INSERT INTO recordings ({columns}) VALUES ({marks})", values)

    def update_recording(
        self,
        db: Connection,
        recording_id: str,
        *,
        expect_status: RecordingStatus | None = None,
        **values: Any,
    ) -> bool:
        """Update one row; with ``expect_status`` only if it is still in that status."""
        sets = ", ".join(f"{k} = :{k}" for k in values)
        sql = f"UPDATE recordings SET {sets} WHERE id = :id"
        params = {**values, "id": recording_id}
        if expect_status is not None:
            sql += " AND status = :expect"
            params["expect"] = expect_status.value
        return db.execute(sql, params).rowcount == 1

    @contextmanager
    def claim_recording(
        self, database: Database, recording_id: str
    ) -> Iterator[tuple[Connection, RecordingRow] | None]:
        """PostgreSQL: a transaction on ``database`` (a side connection: ``open_side``) that
        holds the row of a recording still ``recording``, locked ``FOR UPDATE SKIP LOCKED``, so
        that no other recoverer (nor the late writer's own finalisation, which waits for the
        lock and then finds the status changed) can finish it meanwhile; None when another
        transaction holds it or it is no longer ``recording``. Committed when the body
        returns."""
        if self.kind != "postgresql":
            raise CatalogError("claiming rows with SKIP LOCKED needs PostgreSQL")
        with database.transaction(shared=True) as db:
            row = db.execute(
                "SELECT * FROM recordings WHERE id = ? AND status = 'recording'"
                " FOR UPDATE SKIP LOCKED",
                (recording_id,),
            ).fetchone()
            yield None if row is None else (db, RecordingRow.from_row(row))

    def recording(self, recording_id: str) -> RecordingRow:
        row = self._database.fetchone("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        if row is None:
            raise UnknownRecording(recording_id)
        return RecordingRow.from_row(row)

    def recordings(
        self,
        *,
        tenant: str | None = None,
        status: RecordingStatus | None = None,
        limit: int | None = None,
    ) -> list[RecordingRow]:
        sql = "SELECT * FROM recordings WHERE 1=1"
        params: list[Any] = []
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        if status is not None:
            sql += " AND status = ?"
            params.append(status.value)
        sql += " ORDER BY started_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._database.fetchall(sql, params)
        return [RecordingRow.from_row(r) for r in rows]

    def set_blob_segments(
        self, db: Connection, recording_id: str, rows: Sequence[tuple[int, str, int, str]]
    ) -> None:
        """List a recording's segments (seq, object key, size, sha256), replacing any listed;
        nothing to do for a blob that is one local file (no rows)."""
        if not rows:
            return
        db.execute("DELETE FROM blob_segments WHERE recording_id = ?", (recording_id,))
        for row in rows:
            db.execute(
                "INSERT INTO blob_segments (recording_id, seq, object_key, size, sha256)"
                " VALUES (?, ?, ?, ?, ?)",
                (recording_id, *row),
            )

    def blob_segments(self, recording_id: str) -> list[tuple[int, str, int, str]]:
        rows = self._database.fetchall(
            "SELECT seq, object_key, size, sha256 FROM blob_segments"
            " WHERE recording_id = ? ORDER BY seq",
            (recording_id,),
        )
        return [(r["seq"], r["object_key"], r["size"], r["sha256"]) for r in rows]

    # -- audit ---------------------------------------------------------------------------------
    def audit(
        self,
        db: Connection,
        *,
        actor: str,
        action: str,
        tenant: str | None = None,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one event to the hash chain, inside the caller's transaction. Its ``seq`` is
        the head's plus one, read under the chain's lock: one chain without gaps, whichever
        process or node appends."""
        detail = detail or {}
        self._database.lock_audit_chain(db)
        last = db.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        at = utc_iso(self._clock())
        key = self.audit_key
        digest = audit_hash(prev, at, actor, action, tenant, target, detail, key)
        db.execute(
            "INSERT INTO audit_events (seq, at, actor, action, tenant, target, detail, prev_hash,"
            " hash, alg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                at,
                actor,
                action,
                tenant,
                target,
                json.dumps(detail, sort_keys=True),
                prev,
                digest,
                KEYED if key is not None else UNKEYED,
            ),
        )

    def audit_head(self) -> tuple[int, str]:
        """The newest entry's seq and link; (0, GENESIS_HASH) for an empty chain."""
        row = self._database.fetchone(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        )
        return (row[0], row[1]) if row else (0, GENESIS_HASH)

    def audit_link(self, seq: int) -> str | None:
        """The link of entry ``seq``, None if there is no such entry."""
        row = self._database.fetchone("SELECT hash FROM audit_events WHERE seq = ?", (seq,))
        return row[0] if row else None

    def audit_count(self) -> int:
        row = self._database.fetchone("SELECT MAX(seq) FROM audit_events")
        return row[0] or 0

    def audit_events(self) -> list[AuditEvent]:
        rows = self._database.fetchall("SELECT * FROM audit_events ORDER BY seq")
        return [
            AuditEvent(
                r["seq"],
                r["at"],
                r["actor"],
                r["action"],
                r["tenant"],
                r["target"],
                json.loads(r["detail"]),
                r["prev_hash"],
                r["hash"],
                r["alg"],
            )
            for r in rows
        ]
