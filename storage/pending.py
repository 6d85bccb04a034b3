"""Catalog writes the disk could not take, kept in order and made once it can again.

A full disk (or a catalog that fails to write for another passing reason: an I/O error, a lock
held too long) must not take calls down. The writes a call makes along the way (its row, its
end, a recording's final state) are made through ``PendingWrites.write``: written at once when
the catalog takes them, otherwise kept here, in memory, in the order they were meant, and
written before anything newer: by the next write that goes through, or by ``flush()`` (the call
registry runs it on a timer while anything is kept).

The queue is bounded (``MAX_PENDING_WRITES``): what would overflow it is dropped, with an error
in the log. What a process still holds when it stops is lost, and nothing is left half done:
a recording still marked ``recording`` is recovered by the next process to open the vault, and a
call row without its end is closed as an orphan.

Only a write the disk refused is kept (the catalog's ``write_failures``: a full disk, an I/O
error, a busy lock; on PostgreSQL also a lost connection); one the catalog refuses for what it
holds (a constraint) is a bug, raised at once, or, when it was kept and fails on a retry,
dropped with an error so that it cannot hold up the writes behind it.

Each write runs in a *shared* catalog transaction (Catalog.transaction): it may write only its
own call's or recording's rows (and append to the audit chain), so that on PostgreSQL the
calls of every node write side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from storage.catalog import Catalog
from storage.errors import VaultWriteError
from storage.sql import Connection

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 10_000  # about 3,000 calls' rows and ends; some 10 MB at most


@dataclass(frozen=True, slots=True)
class PendingWrite:
    what: str  # for the log: "call call_… ended", never personal data
    apply: Callable[[Connection], object]  # runs inside one shared catalog transaction


class PendingWrites:
    def __init__(
        self,
        catalog: Catalog,
        *,
        limit: int = MAX_PENDING_WRITES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self.limit = limit
        self._monotonic = monotonic
        self._queue: deque[PendingWrite] = deque()
        self._lock = threading.RLock()
        self.failing_since: float | None = None  # monotonic time of the first failure
        self.last_error: str | None = None
        self.deferred = 0  # writes kept for later, since the start
        self.written_late = 0  # kept writes made later
        self.dropped = 0  # kept writes given up (queue full, or refused on a retry)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def failing(self) -> bool:
        """The latest catalog write failed (and none has succeeded since)."""
        return self.failing_since is not None

    def write(
        self, what: str, apply: Callable[[Connection], object], *, defer: bool = True
    ) -> bool:
        """Make one catalog write, after everything kept before it. True: it is in the catalog
        now. When the disk cannot take it: kept for later and False, or, unless ``defer``,
        VaultWriteError (nothing kept)."""
        with self._lock:
            if self.flush():
                try:
                    self._apply(apply)
                    return True
                except self._catalog.write_failures as exc:
                    self._failed(what, exc)
            if not defer:
                raise VaultWriteError(f"the catalog cannot be written: {self.last_error}")
            self._keep(PendingWrite(what, apply))
            return False

    def flush(self) -> bool:
        """Make the kept writes, oldest first, up to the first the disk still refuses. True
        when none is left."""
        with self._lock:
            while self._queue:
                item = self._queue[0]
                try:
                    self._apply(item.apply)
                except self._catalog.write_failures as exc:
                    self._failed(item.what, exc)
                    return False
                except Exception as exc:  # it can never be written: do not hold up the rest
                    self.dropped += 1
                    log.error("catalog write dropped (%s): %s", item.what, exc)
                else:
                    self.written_late += 1
                self._queue.popleft()
            return True

    def _apply(self, apply: Callable[[Connection], object]) -> None:
        with self._catalog.transaction(shared=True) as db:
            apply(db)
        if self.failing_since is not None:
            log.warning(
                "catalog writes work again after %.0f s; %d kept write(s) being made",
                self._monotonic() - self.failing_since,
                len(self._queue),
            )
            self.failing_since = None

    def _failed(self, what: str, exc: Exception) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = self._monotonic()
            log.error(
                "catalog write failed (%s): %s; calls go on, their rows are written when the "
                "disk takes them again",
                what,
                self.last_error,
            )

    def _keep(self, item: PendingWrite) -> None:
        if len(self._queue) >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "catalog write dropped (%s): %d writes already wait for the disk "
                    "(%d dropped so far)",
                    item.what,
                    len(self._queue),
                    self.dropped,
                )
            return
        self.deferred += 1
        self._queue.append(item)
