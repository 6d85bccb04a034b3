"""Where the keyring document lives: a file in the data directory, or a key store database.

The keyring (storage/keys.py) is one JSON document whose secrets are sealed under the master
key. This module only stores and locks that document; it never sees a key in clear.

- ``FileKeyringStore``: ``keyring.json`` in the data directory (the embedded default). A change
  is an atomic rename under an exclusive ``flock``; readers notice a newer file by its
  modification time and size.
- ``PostgresKeyringStore`` (``[storage] keyring_url = "postgresql://..."``, docs/key-custody.md,
  "Several nodes"): one row of the table ``ivr_keyring`` in a database of its own, so that
  every node shares one keyring, and kept apart from the catalog so that the two are backed up
  under different policies. The catalog's backups hold the wrapped data keys of every
  recording; a key version retired from the keyring (and from the key store's own backups,
  which are kept briefly) no longer opens any of them, whatever catalog backup survives. A
  change runs in one transaction under an advisory lock; readers compare the row's
  ``revision``, at most once per ``REFRESH_SECONDS``, so that a key read is not a database
  round trip on every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from storage.files import atomic_write, open_private, private_dir
from storage.sql import driver_message

# How stale a node's copy of the shared keyring may be: a key version added on another node is
# used here within this many seconds; one retired there is forgotten here within as many.
# (A data key wrapped under a version this node has not seen yet makes it re-read at once.)
REFRESH_SECONDS = 1.0
TABLE = "ivr_keyring"
# The key store's advisory lock (namespace, lock), apart from the catalog's (storage/postgres.py)
# so that a key store sharing the catalog's database never waits on catalog writes.
LOCK = (0x1C0_5E7, 100)


class KeyStoreUnavailable(Exception):
    """The key store could not be read or written; the message names it (without password)."""


class KeyringStore(Protocol):
    where: str  # for messages: a path, or a URL without its password

    def stamp(self) -> object | None:
        """Something that changes whenever the document does; None if there is none yet."""

    def read(self) -> tuple[bytes, object]:
        """The document and its stamp. Raises OSError (file) or KeyStoreUnavailable."""

    def write(self, data: bytes) -> None:
        """Replace the document; only inside ``locked()``."""

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive against every other process (and node) changing the document."""

    def refresh_now(self) -> None:
        """Forget any cached stamp: the next ``stamp()`` asks the store itself."""

    def after_retirement(self) -> None:
        """Make the store's own copies of retired keys unreachable where it can."""

    def close(self) -> None: ...


class FileKeyringStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def stamp(self) -> object | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def read(self) -> tuple[bytes, object]:
        st = self.path.stat()
        return self.path.read_bytes(), (st.st_mtime_ns, st.st_size)

    def write(self, data: bytes) -> None:
        atomic_write(self.path, data, mode=0o600)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        fd = open_private(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def refresh_now(self) -> None:
        pass  # a stat is always fresh

    def after_retirement(self) -> None:
        pass  # the atomic rename already replaced the file that held them

    def close(self) -> None:
        pass


class PostgresKeyringStore:
    """The keyring document in one row of ``ivr_keyring`` (name 'keyring'), with a revision
    counted up by every change."""

    def __init__(
        self,
        url: str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        connect_timeout: int = 10,
    ) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on what is installed
            raise ImportError(
                "a postgresql:// keyring_url needs psycopg 3: pip install 'psycopg[binary]'"
            ) from exc
        from storage.postgres import redacted

        self._psycopg = psycopg
        self.url = url
        self.where = redacted(url)
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._connect_timeout = connect_timeout
        self._mutex = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False
        self._cached: tuple[float, object | None] | None = None
        with self._failing("create its table"):
            conn = self._connection()
            # Under the store's lock: two CREATE TABLE IF NOT EXISTS at once (nodes starting
            # together) can both find no table, and the second then fails on the catalog's
            # unique index of type names instead of finding the first one's table.
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK)
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                    " name TEXT PRIMARY KEY,"
                    " document BYTEA NOT NULL,"
                    " revision BIGINT NOT NULL,"
                    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            raise KeyStoreUnavailable(
                f"key store {self.where}: could not {doing}: {driver_message(exc, self.url)}"
            ) from None

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(self._psycopg.Error):
                    conn.close()
            self._conn = conn = self._psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="ivr-keyring",
            )
        return conn

    def stamp(self) -> object | None:
        with self._mutex:
            now = self._monotonic()
            if (
                not self._in_transaction
                and self._cached is not None
                and now - self._cached[0] < self._refresh_seconds
            ):
                return self._cached[1]
            with self._failing("read the keyring's revision"):
                row = (
                    self._connection()
                    .execute(f"SELECT revision FROM {TABLE} WHERE name = 'keyring'")
                    .fetchone()
                )
            value = None if row is None else int(row[0])
            self._cached = (now, value)
            return value

    def read(self) -> tuple[bytes, object]:
        with self._mutex, self._failing("read the keyring"):
            row = (
                self._connection()
                .execute(f"SELECT document, revision FROM {TABLE} WHERE name = 'keyring'")
                .fetchone()
            )
        if row is None:
            raise KeyStoreUnavailable(f"key store {self.where} holds no keyring")
        self._cached = (self._monotonic(), int(row[1]))
        return bytes(row[0]), int(row[1])

    def write(self, data: bytes) -> None:
        if not self._in_transaction:
            raise RuntimeError("PostgresKeyringStore.write outside locked()")
        with self._failing("write the keyring"):
            self._connection().execute(
                f"INSERT INTO {TABLE} (name, document, revision) VALUES ('keyring', %s, 1)"
                " ON CONFLICT (name) DO UPDATE SET document = excluded.document,"
                f" revision = {TABLE}.revision + 1, updated_at = now()",
                (data,),
            )
        self._cached = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._mutex:
            with self._failing("lock the keyring"):
                conn = self._connection()
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK)
            self._in_transaction = True
            try:
                yield
                with self._failing("commit the keyring"):
                    conn.execute("COMMIT")
            except BaseException:
                if not conn.closed and not conn.broken:
                    with contextlib.suppress(self._psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                self._in_transaction = False
                self._cached = None

    def refresh_now(self) -> None:
        with self._mutex:
            self._cached = None

    def after_retirement(self) -> None:
        """VACUUM the table: the row versions that held the retired keys are dead once the
        change commits, and VACUUM prunes them from their pages. The server's WAL, its archive
        and base backups still hold them until they age out (docs/key-custody.md, "Several
        nodes")."""
        with self._mutex, self._failing("vacuum the keyring table"):
            self._connection().execute(f"VACUUM {TABLE}")

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(self._psycopg.Error):
                    self._conn.close()
                self._conn = None


def open_keyring_store(url: str | None, data_dir: Path, file_name: str) -> KeyringStore:
    """The key store of ``url`` (postgresql://), else the file ``file_name`` in ``data_dir``."""
    if url is None:
        return FileKeyringStore(data_dir / file_name)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresKeyringStore(url)
    raise ValueError(
        "keyring_url must start with postgresql:// (leave it out for keyring.json in the data "
        "directory)"
    )
