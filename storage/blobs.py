"""Blob stores: where sealed recordings live, and how they get there.

Two stores share one interface (``BlobStore``): the local one here, and the S3-compatible one in
storage/s3blobs.py. The vault names a recording's blob by the ``relpath`` its store gives it
(kept in the catalog's ``blob_path``); whatever the store, the bytes are exactly the recording
format of docs/recording-format.md.

Local: a blob is written as ``<id>.rec.part`` while its call runs and renamed to ``<id>.rec``
once its final chunk is durable. Chunks are appended as they are sealed; what makes them durable
runs on one thread of the store's, never on the caller's thread (the event loop): every
``sync_interval`` seconds it ``fdatasync``s each blob written to since its last round, one
syscall per blob covering whatever was written before it (``PeriodicSync``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from storage.errors import VaultWriteError
from storage.files import fsync_dir, open_private, private_dir

log = logging.getLogger(__name__)

PART_SUFFIX = ".rec.part"
# How often a growing blob is fsynced. Every chunk reaches the OS as it is sealed (a dead process
# loses at most the chunk being built); an fsync per chunk per call costs about a fifth of the
# service's CPU, so after a power cut up to this much more audio may be missing.
DEFAULT_SYNC_INTERVAL = 5.0
FINAL_SUFFIX = ".rec"


@dataclass(frozen=True, slots=True)
class Segment:
    """One write-once object of a blob kept in an object store: the blob is its segments in
    ``seq`` order, concatenated."""

    seq: int
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BlobInfo:
    relpath: str
    size: int
    sha256: str
    units: int  # writes (chunks) that reached the disk (or the object store) whole
    segments: tuple[Segment, ...] = ()  # an object store's segments; () for a local file


class ByteSource(Protocol):
    """What the reader and the scans read a blob through: a file, or a store's stream."""

    def read(self, size: int = -1, /) -> bytes: ...

    def tell(self) -> int: ...


class BlobWriter(Protocol):
    """A blob being written: what a recording needs of it, whichever store it is in."""

    relpath: str
    error: VaultWriteError | None

    def write(self, data: bytes) -> None: ...

    def failure(self) -> VaultWriteError: ...

    def wait(self) -> None: ...

    def finish(self) -> BlobInfo: ...

    def abandon(self) -> BlobInfo: ...

    def discard(self) -> None: ...

    def open_kept(self) -> AbstractContextManager[ByteSource]: ...


class RecoverySource(Protocol):
    """What a dead writer left of a blob, for crash recovery: read it, then keep the first
    ``end_offset`` bytes (what verified) as the finished blob."""

    def open(self) -> AbstractContextManager[ByteSource]: ...

    def keep(self, end_offset: int, units: int) -> BlobInfo: ...

    def last_modified(self) -> datetime: ...


class BlobStore(Protocol):
    def relpath(self, tenant: str, recording_id: str) -> str: ...

    def create(self, tenant: str, recording_id: str) -> BlobWriter: ...

    def open(
        self, relpath: str, *, size: int | None, segments: Sequence[Segment]
    ) -> AbstractContextManager[ByteSource]:
        """A finished blob. Raises FileNotFoundError when it is not there."""
        ...

    def recovery_source(self, relpath: str) -> RecoverySource | None: ...

    def delete(self, relpath: str) -> None: ...

    def remove_orphans(self, live: Callable[[], Collection[str]]) -> int:
        """Delete the blobs none of ``live()`` (relpaths of recordings kept) names."""
        ...

    def set_legal_hold(self, relpath: str, held: bool) -> bool:
        """Mirror a legal hold on the blob where the store can hold data itself (S3 Object
        Lock); False where it cannot, and the catalog's hold is the only one."""
        ...

    def close(self) -> None: ...


class PeriodicSync:
    """The thread that makes growing blobs durable: a blob marks itself dirty when written to,
    and every ``interval`` seconds (at once for 0) one round ``fdatasync``s every dirty blob.

    One round for all of a store's blobs, rather than a job per blob, keeps the wake-ups to one
    per interval whatever the number of calls; ``fdatasync`` skips the timestamps an ``fsync``
    would also write, and keeps the size, which reading the data back needs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._dirty: dict[BlobFile, None] = {}  # insertion-ordered: synced in write order
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def mark(self, blob: BlobFile) -> None:
        with self._lock:
            if self._stopped:
                return
            self._dirty[blob] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="blob-sync", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        next_round = 0.0
        while True:
            self._wake.wait()
            delay = next_round - time.monotonic()
            if delay > 0:
                self._halt.wait(min(delay, self.interval))  # cut short by stop()
            with self._lock:
                self._wake.clear()
                dirty, self._dirty = list(self._dirty), {}
                stopped = self._stopped
            next_round = time.monotonic() + self.interval
            for blob in dirty:
                blob.sync()
            if stopped:
                return

    def stop(self) -> None:
        """Sync what is dirty one last time and end the thread."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._halt.set()
        self._wake.set()
        if thread is not None:
            thread.join()


class LocalBlobStore:
    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.sync_interval = sync_interval
        self._syncer = PeriodicSync(sync_interval)
        private_dir(root, tighten=True)

    def relpath(self, tenant: str, recording_id: str, suffix: str = FINAL_SUFFIX) -> str:
        return f"{tenant}/{recording_id[-2:]}/{recording_id}{suffix}"

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def create(self, tenant: str, recording_id: str) -> BlobFile:
        part = self.path(self.relpath(tenant, recording_id, PART_SUFFIX))
        private_dir(part.parent)
        return BlobFile(
            part,
            self.relpath(tenant, recording_id),
            self.path(self.relpath(tenant, recording_id)),
            self._syncer if self.fsync else None,
        )

    def open(
        self, relpath: str, *, size: int | None = None, segments: Sequence[Segment] = ()
    ) -> AbstractContextManager[ByteSource]:
        return self.path(relpath).open("rb")

    def recovery_source(self, relpath: str) -> LocalRecovery | None:
        final = self.path(relpath)
        part = final.with_name(final.name.removesuffix(FINAL_SUFFIX) + PART_SUFFIX)
        source = part if part.exists() else final if final.exists() else None
        return None if source is None else LocalRecovery(relpath, source, final)

    def delete(self, relpath: str) -> None:
        path = self.path(relpath)
        path.unlink(missing_ok=True)
        path.with_name(path.name.removesuffix(FINAL_SUFFIX) + PART_SUFFIX).unlink(missing_ok=True)

    def remove_orphans(self, live: Callable[[], Collection[str]]) -> int:
        # Only finished blobs (``.rec``): a ``.rec.part`` is being written or awaits recovery.
        found = list(self.root.rglob("*" + FINAL_SUFFIX))
        kept = live()
        removed = 0
        for path in found:
            if path.relative_to(self.root).as_posix() not in kept:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def set_legal_hold(self, relpath: str, held: bool) -> bool:
        return False  # a file has no hold of its own: the catalog's is the one

    def close(self) -> None:
        self._syncer.stop()


class LocalRecovery:
    """A dead writer's blob file: cut after its last good chunk and given its final name."""

    def __init__(self, relpath: str, source: Path, final: Path) -> None:
        self.relpath = relpath
        self.source = source
        self.final = final

    def open(self) -> AbstractContextManager[ByteSource]:
        return self.source.open("rb")

    def keep(self, end_offset: int, units: int) -> BlobInfo:
        with self.source.open("r+b") as fh:
            fh.truncate(end_offset)
            os.fsync(fh.fileno())
        if self.source != self.final:
            os.replace(self.source, self.final)
            fsync_dir(self.final.parent)
        size, digest = sha256_file(self.final)
        return BlobInfo(self.relpath, size, digest, units)

    def last_modified(self) -> datetime:
        path = self.final if self.final.exists() else self.source
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


# The lock and condition of every BlobFile's ``closed`` and ``_syncing``: held only to read or
# flip those two flags, and waited on only while a sync of the blob runs, so one is shared by
# all, rather than a condition (a lock and a queue of waiters) kept by each live call's blob.
_SYNC_STATE = threading.Condition()


class BlobFile:
    """An append-only blob being written.

    ``write`` appends to the file at once (a page-cache write of one chunk, about a second of
    audio, is short) and reports a full disk straight away; the sync that makes it durable is
    the slow part, so the store's ``PeriodicSync`` does it on its thread (without one, as with
    ``fsync = false``, nothing is synced before ``finish``).
    """

    def __init__(
        self, part: Path, relpath: str, final: Path, syncer: PeriodicSync | None = None
    ) -> None:
        self.part = part
        self.relpath = relpath
        self.final = final
        self._syncer = syncer
        self._fd = open_private(part)
        # Guards ``closed`` and ``_syncing``: the descriptor is never closed while a sync on
        # it runs (its number could be another file's by the time the sync starts).
        self._lock = _SYNC_STATE
        self._dirty = False
        self._syncing = False
        self._hash = hashlib.sha256()
        self.size = 0
        self.units = 0
        self.error: VaultWriteError | None = None
        self.closed = False
        self.done: BlobInfo | None = None  # finished or abandoned

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.failure()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise self._fail(exc) from None
        self._hash.update(data)
        self.size += len(data)
        self.units += 1
        if self._syncer is not None and not self._dirty:
            # Set here and cleared by the sync before it starts: a write after that marks
            # the blob again, so nothing written is left out of a round.
            self._dirty = True
            self._syncer.mark(self)

    def sync(self) -> None:
        """Make what was written so far durable (on the syncer's thread); a failure is kept as
        ``error``, which the next write and ``finish`` raise."""
        with self._lock:
            if self.closed or self._syncing:
                return
            self._dirty = False
            self._syncing = True
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._fail(exc)
        finally:
            with self._lock:
                self._syncing = False
                self._lock.notify_all()

    def _fail(self, exc: OSError) -> VaultWriteError:
        """Record the failure as ``self.error`` (what every later write raises) and return it."""
        # Cut back to the last whole unit so the file stays a valid (if unfinished) blob
        # (never through a descriptor already closed: its number may be another file's now).
        if not self.closed:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
                os.fsync(self._fd)
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        error = VaultWriteError(f"writing {self.part.name}: {reason}")
        error.errno = exc.errno or errno.EIO
        error.strerror = reason
        self.error = error
        return error

    def failure(self) -> VaultWriteError:
        """The failure every write after it raises. Raised afresh each time: an exception
        raised again keeps its old traceback and grows it, which on a full disk, once per
        frame of every call, would be memory without bound."""
        assert self.error is not None
        return self.error.with_traceback(None)

    def wait(self) -> None:
        """Block until a sync under way on the syncer's thread has finished."""
        with self._lock:
            while self._syncing:
                self._lock.wait()

    def finish(self) -> BlobInfo:
        """Make durable and rename to the final name. Raises VaultWriteError if any write
        failed, or the disk refuses now; ``abandon()`` then keeps what reached it."""
        if self.done is not None:
            return self.done
        self.wait()
        if self.error is not None:
            raise self.failure()
        try:
            if not self.closed:
                os.fsync(self._fd)  # a full disk may refuse this too (delayed allocation)
            self._close_fd()
            os.replace(self.part, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            raise self._fail(exc) from None
        return self._done()

    def abandon(self) -> BlobInfo:
        """Stop writing after a failure: keep what reached the disk under the final name.
        Idempotent, and never fails on the file: a blob that cannot be renamed stays
        ``.rec.part``, where recovery finds it."""
        if self.done is not None:
            return self.done
        self.wait()
        self._close_fd()
        try:
            if self.part.exists():
                os.replace(self.part, self.final)
                fsync_dir(self.final.parent)
        except OSError as exc:
            log.error("%s: kept as it is: %s", self.part.name, exc)
        return self._done()

    @property
    def kept(self) -> Path:
        """Where the blob is now: its final name once finished or abandoned."""
        return self.final if self.final.exists() else self.part

    def open_kept(self) -> AbstractContextManager[ByteSource]:
        """What reached the disk, to read back (after ``finish`` or ``abandon``)."""
        return self.kept.open("rb")

    def _done(self) -> BlobInfo:
        self.done = BlobInfo(self.relpath, self.size, self._hash.hexdigest(), self.units)
        return self.done

    def discard(self) -> None:
        self.wait()
        self._close_fd()
        self.part.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        with self._lock:
            while self._syncing:
                self._lock.wait()
            if self.closed:
                return
            self.closed = True
        with contextlib.suppress(OSError):  # close() may report a write-back error: known
            os.close(self._fd)


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
