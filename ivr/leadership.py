"""Which of the processes sharing a data directory runs the background jobs: the retention
sweep, with the breach watch and the key schedule. Two ``ivr serve`` on one vault (two
instances behind one PBX, or a restart overlapping the old process) would otherwise both purge,
both warn about the same breach and both rotate the same tenant's key.

The process holding an exclusive ``flock`` on ``background-jobs.lock`` in the data directory
runs them; the others try again every few seconds (``RETRY_SECONDS``).
The kernel releases the lock when its holder exits, however it exits (SIGKILL included), so
another process takes over at its next try. This covers processes on one machine (the workers
of ``ivr serve --workers N`` among them), and it is what a SQLite catalog gets.

On a catalog other machines share (PostgreSQL), a file lock on one machine excludes nobody on
another: ``LeaseLeadership`` holds the lease ``background-jobs`` in the catalog's ``leases``
table instead (storage/liveness.py), taken when free or expired and renewed by its holder, both
atomically on the database's clock. Its holder counts itself leader only until its own view of
the lease runs out, measured from before it sent the renewal, so it stops believing before the
database lets another take over (unless its clock runs slow by more than the margin). A round
of a job already under way is not interrupted: what two rounds could both do is guarded where it
is written (recovery claims rows ``FOR UPDATE SKIP LOCKED``; docs/cluster.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from storage.files import open_private
from storage.liveness import LeaseTerms, NamedLease
from storage.vault import Vault

log = logging.getLogger(__name__)

LOCK_FILE = "background-jobs.lock"
LEASE_NAME = "background-jobs"
# How often a process that does not hold a file lock tries to take it (a dead holder's lock is
# free at once, its jobs should not wait a sweep interval).
RETRY_SECONDS = 2.0


class Leader(Protocol):
    """Whether this process runs the background jobs."""

    @property
    def held(self) -> bool:
        """As last claimed; never waits."""
        ...

    # How often ``claim`` should be called to take over or keep holding.
    retry_seconds: float

    def claim(self) -> bool:
        """Take or keep the jobs; whether this process holds them now. May wait on a lock or
        the database: call it off the event loop."""
        ...

    def release(self) -> None: ...


def leadership_for(vault: Vault, terms: LeaseTerms) -> Leader:
    """A file lock in the data directory on SQLite; a lease in the catalog on PostgreSQL."""
    if vault.catalog.kind == "postgresql":
        return LeaseLeadership(vault, terms)
    return Leadership(vault.data_dir)


class Leadership:
    retry_seconds = RETRY_SECONDS

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def claim(self) -> bool:
        """Whether this process runs the background jobs now: it already did, or the lock was
        free and is now ours."""
        if self._fd is not None:
            return True
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        log.info("this process runs the background jobs (retention sweep, breach watch, keys)")
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class LeaseLeadership:
    """The background jobs' lease in the catalog, for processes on several machines."""

    def __init__(
        self,
        vault: Vault,
        terms: LeaseTerms,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.terms = terms
        self.retry_seconds = terms.renew_every
        self._monotonic = monotonic
        self._database = vault.catalog.open_side()  # never waits behind the catalog's own
        self._lease = NamedLease(self._database, LEASE_NAME, vault.writer_id, terms)
        self._until = 0.0  # monotonic time until which we hold it, as far as we know
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._monotonic() < self._until

    def claim(self) -> bool:
        with self._lock:
            asked = self._monotonic()
            was = self.held
            try:
                got = self._lease.claim()
            except self._database.write_failures as exc:
                if was:
                    log.error("background jobs' lease not renewed: %s", exc)
                return self.held  # believed until its time runs out, not a moment longer
            self._until = asked + self.terms.seconds if got else 0.0
            if got and not was:
                log.info(
                    "this process runs the background jobs (retention sweep, breach watch, "
                    "keys, dead-process recovery) for every node on the catalog"
                )
            elif was and not got:
                log.error("background jobs' lease lost to another process: stopped running them")
            return got

    def release(self) -> None:
        with self._lock:
            if self._until:
                try:
                    self._lease.release()
                except self._database.write_failures as exc:
                    log.warning("background jobs' lease not released (it expires): %s", exc)
            self._until = 0.0
            self._database.close()
