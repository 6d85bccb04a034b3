"""The connection layer under the catalog: one interface, two databases (docs/postgresql.md).

The catalog's SQL is written once, in SQLite's dialect with ``?`` and ``:name`` parameters and
portable statements; what differs between the databases lives behind ``Database``: how a write
transaction starts and what it locks, how the schema version is kept, how the migrations' DDL
reads, what an erasure must do afterwards, and which errors mean "could not write now".

``SqliteDatabase`` is the embedded default (one file in the data directory). The PostgreSQL one
is in storage/postgres.py, imported (by storage/catalog.py) only when a ``postgresql://`` URL is
given.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from storage.files import open_private

Params = Sequence[Any] | Mapping[str, Any]


class Row(Protocol):
    """A result row, read by position or by column name (as ``sqlite3.Row``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...  # a Row, or None

    def fetchall(self) -> list[Any]: ...  # Rows


class Connection(Protocol):
    """What a transaction hands its body: ``execute`` with the catalog's parameter style."""

    def execute(self, sql: str, params: Params = (), /) -> Cursor: ...


class Database(Protocol):
    """One catalog database, shared by the threads of a process (every method is serialised by
    the catalog's lock) and by other processes and, for PostgreSQL, other nodes."""

    kind: str  # "sqlite" or "postgresql"
    where: str  # for messages: a path, or a URL without its password
    # What a write raises when the database could not take it now (a full disk, a lost
    # connection): the writes a call makes are kept and made later (storage/pending.py).
    write_failures: tuple[type[Exception], ...]
    # What opening or migrating raises when the database is not usable at all.
    open_failures: tuple[type[Exception], ...]

    def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        """Rows of one read, outside any write transaction."""
        ...

    def fetchone(self, sql: str, params: Params = ()) -> Any: ...

    def transaction(self, *, shared: bool = False, lock: bool = True) -> Any:
        """A context manager: one write transaction, committed when its body returns, rolled
        back when it raises. ``shared``: the body touches only rows this writer owns (a call's
        row, a recording it writes), so other shared transactions may run beside it; any other
        transaction excludes every other writer, as SQLite always does. ``lock`` False: the
        body touches only tables outside that discipline (leases, storage/liveness.py), so it
        takes no catalog lock where the database has one to skip (PostgreSQL)."""
        ...

    def clock_sql(self) -> str:
        """An SQL expression for the database's own time now plus ``?`` seconds (one
        parameter, a float), in the catalog's text form of a time (``utc_iso``'s, which sorts
        as it compares): what leases are measured by (storage/liveness.py)."""
        ...

    def lock_audit_chain(self, db: Connection) -> None:
        """Inside a transaction, before reading the chain's head: no other writer appends
        until this transaction ends."""
        ...

    def schema_version(self, db: Connection) -> int: ...

    def set_schema_version(self, db: Connection, version: int) -> None: ...

    def migration(self, statement: str) -> str:
        """One DDL statement of the catalog's migrations (written for SQLite) as this
        database reads it."""
        ...

    def after_erasure(self, tables: Sequence[str]) -> None:
        """What can be done, after values were erased from ``tables``, so that their old
        bytes do not linger in this database's own files."""
        ...

    def follow_identity(self, db: Connection, table: str, column: str) -> None:
        """After rows were inserted with their own values in ``column`` (an ``INTEGER PRIMARY
        KEY``, copied from another catalog): the next row given none gets one past them."""
        ...

    def close(self) -> None: ...


class SqliteDatabase:
    kind = "sqlite"
    # SQLite reports a full disk, an I/O error and a busy lock as OperationalError.
    write_failures: tuple[type[Exception], ...] = (sqlite3.OperationalError, OSError)
    open_failures: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock = threading.RLock()
        if not path.exists():
            # The WAL and shared-memory files take their mode from the database file.
            os.close(open_private(path, os.O_WRONLY | os.O_CREAT))
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed key row survives power loss, not only a dead process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # Erased values (wrapped data keys, sealed numbers) are overwritten on disk, not
            # just unlinked from the b-tree.
            self._db.execute("PRAGMA secure_delete=ON")
        except BaseException:
            self._db.close()
            raise

    def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Params = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    @contextmanager
    def transaction(self, *, shared: bool = False, lock: bool = True) -> Iterator[Connection]:
        """BEGIN IMMEDIATE: SQLite has one writer at a time, ``shared`` or not. Whatever fails
        in it, the COMMIT included (a full disk can refuse it), leaves no transaction open:
        SQLite may already have rolled back on its own (then ROLLBACK would fail and hide the
        real error), or left it open (then every later BEGIN would fail)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def lock_audit_chain(self, db: Connection) -> None:
        """Nothing to do: BEGIN IMMEDIATE already excludes every other writer."""

    def clock_sql(self) -> str:
        # The machine's clock, which every process on this file shares; '%f' is SS.SSS, padded
        # to utc_iso's microseconds so that both forms compare alike.
        return "strftime('%Y-%m-%dT%H:%M:%f', 'now', printf('%+.6f seconds', ?)) || '000Z'"

    def schema_version(self, db: Connection) -> int:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def set_schema_version(self, db: Connection, version: int) -> None:
        db.execute(f"PRAGMA user_version={int(version)}")

    def migration(self, statement: str) -> str:
        return statement

    def after_erasure(self, tables: Sequence[str]) -> None:
        """secure_delete overwrote the erased values in the database file; fold the WAL into
        it and empty it, so old page images holding them do not linger in the log."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def follow_identity(self, db: Connection, table: str, column: str) -> None:
        """Nothing to do: an ``INTEGER PRIMARY KEY`` given no value takes the largest plus one."""

    def close(self) -> None:
        with self._lock:
            self._db.close()


def driver_message(exc: BaseException, url: str) -> str:
    """A database driver's error as one line, with the password of ``url`` (should it carry
    one, and the driver repeat it) masked: what an operator needs (a refused connection, a
    failed login), never the secret."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
