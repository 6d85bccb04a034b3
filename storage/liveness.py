"""Whether another process is alive, and leases: what tells processes on several machines apart
from processes that died (docs/cluster.md, "Leases").

On one machine a process is alive while it holds the file lock of its writer id in the data
directory (storage/vault.py): the kernel drops the lock when the process dies, however it dies,
so the answer is exact and immediate. Another machine cannot see that lock. When the catalog is
shared between machines (PostgreSQL), each process therefore also holds a *lease*: its row in
the catalog's ``processes`` table carries ``lease_expires_at``, which the process pushes forward
every ``renew_every`` seconds to ``lease`` seconds ahead. Expiry is computed and compared by the
database's own clock (``now()`` on the server), so the nodes' clocks may disagree as they like.
A process whose lease has expired is taken for dead by every other process, whether it is or not
(a machine cut off from the database, a process stopped in a debugger): what fences it off from
the work it held is that its later writes check what they overwrite (a recording is finalised
only while it is still ``recording``) and that recovery claims rows with ``FOR UPDATE SKIP
LOCKED``.

The same kind of lease, in the ``leases`` table by name, elects the one process among all nodes
that runs the background jobs (ivr/leadership.py).

Renewals run on a connection of their own, in a thread of their own (``Renewer``), so that a long
catalog transaction of the same process (an erasure, a vacuum) never holds up its lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from storage.sql import Database

log = logging.getLogger(__name__)

# How long a lease lasts, and how often its holder renews it: two renewals may fail (a busy
# database, a lost connection made again) before the lease lapses.
LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0
MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a lease lasts (``seconds``) and how often it is renewed (``renew_every``,
    less than ``seconds``)."""

    seconds: float = LEASE_SECONDS
    renew_every: float = RENEW_SECONDS

    def __post_init__(self) -> None:
        if not MIN_LEASE_SECONDS <= self.seconds <= MAX_LEASE_SECONDS:
            raise ValueError(
                f"a lease lasts {MIN_LEASE_SECONDS:g} to {MAX_LEASE_SECONDS:g} seconds, "
                f"not {self.seconds!r}"
            )
        if not 0 < self.renew_every < self.seconds:
            raise ValueError(
                f"a lease of {self.seconds:g} s is renewed more often than it lasts, "
                f"not every {self.renew_every!r} s"
            )

    @classmethod
    def lasting(cls, seconds: float) -> LeaseTerms:
        """A lease of ``seconds``, renewed three times in its life."""
        return cls(seconds=seconds, renew_every=seconds / 3)


DEFAULT_TERMS = LeaseTerms()


class ProcessLease:
    """This process's lease: its ``processes`` row, held and renewed on ``database`` (a
    connection of its own). ``renew`` returns whether the lease was still ours; a lease found
    lost (the row gone, or expired before we renewed it) is logged as an error and taken
    again at once, and ``lost`` counts it."""

    def __init__(
        self, database: Database, writer_id: str, terms: LeaseTerms, started_at: str
    ) -> None:
        self.database = database
        self.writer_id = writer_id
        self.terms = terms
        self.started_at = started_at
        self.relay_url = ""  # set once the process listens for relayed requests
        self.lost = 0

    def take(self) -> None:
        """Register this process with a fresh lease (its relay address, if any, is kept)."""
        expires = self.database.clock_sql()
        with self.database.transaction(shared=True, lock=False) as db:
            db.execute(
                "INSERT INTO processes (writer_id, relay_url, started_at, lease_expires_at)"
                f" VALUES (?, ?, ?, {expires})"
                f" ON CONFLICT (writer_id) DO UPDATE SET lease_expires_at = {expires}",
                (
                    self.writer_id,
                    self.relay_url,
                    self.started_at,
                    self.terms.seconds,
                    self.terms.seconds,
                ),
            )

    def renew(self) -> bool:
        """Push the lease forward if it is still ours; take it again if it was lost."""
        expires, now = self.database.clock_sql(), self.database.clock_sql()
        with self.database.transaction(shared=True, lock=False) as db:
            kept = db.execute(
                f"UPDATE processes SET lease_expires_at = {expires}"
                f" WHERE writer_id = ? AND lease_expires_at > {now}",
                (self.terms.seconds, self.writer_id, 0.0),
            ).rowcount
        if kept == 1:
            return True
        self.lost += 1
        log.error(
            "process %s: its lease was lost (expired or removed before it was renewed): other "
            "processes took it for dead and may have finished its recordings as incomplete; "
            "registering again",
            self.writer_id,
        )
        self.take()
        return False

    def release(self) -> None:
        with self.database.transaction(shared=True, lock=False) as db:
            db.execute("DELETE FROM processes WHERE writer_id = ?", (self.writer_id,))


def lease_alive(database: Database, writer_id: str) -> bool:
    """Whether ``writer_id``'s lease has not expired, by the database's clock (no row: no)."""
    now = database.clock_sql()
    row = database.fetchone(
        f"SELECT lease_expires_at > {now} FROM processes WHERE writer_id = ?", (0.0, writer_id)
    )
    return bool(row is not None and row[0])


class NamedLease:
    """A lease by name in the ``leases`` table (one holder across every node): taken when free
    or expired, renewed by its holder, both atomically in one statement on the database's
    clock. ``claim`` answers whether ``holder`` holds it now."""

    def __init__(self, database: Database, name: str, holder: str, terms: LeaseTerms) -> None:
        self.database = database
        self.name = name
        self.holder = holder
        self.terms = terms

    def claim(self) -> bool:
        expires, now = self.database.clock_sql(), self.database.clock_sql()
        with self.database.transaction(shared=True, lock=False) as db:
            row = db.execute(
                "INSERT INTO leases (name, holder, expires_at)"
                f" VALUES (?, ?, {expires})"
                " ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires_at = excluded.expires_at"
                f" WHERE leases.holder = excluded.holder OR leases.expires_at <= {now}"
                " RETURNING holder",
                (self.name, self.holder, self.terms.seconds, 0.0),
            ).fetchone()
        return row is not None

    def release(self) -> None:
        with self.database.transaction(shared=True, lock=False) as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (self.name, self.holder))

    def current_holder(self) -> str | None:
        """Who holds the lease now (by the database's clock), None if nobody does."""
        now = self.database.clock_sql()
        row = self.database.fetchone(
            f"SELECT holder FROM leases WHERE name = ? AND expires_at > {now}", (self.name, 0.0)
        )
        return None if row is None else str(row[0])


class Renewer:
    """Calls ``renew`` every ``every`` seconds in a daemon thread until ``stop``. A failing
    renewal (the database unreachable) is logged once per run of failures and tried again at
    the next tick: the lease then lapses unless the database comes back in time."""

    def __init__(self, name: str, renew: Callable[[], object], every: float) -> None:
        self.name = name
        self._renew = renew
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._every):
            try:
                self._renew()
            except Exception as exc:  # the thread must outlive any one failure
                self.failures += 1
                if not failing:
                    log.error("%s: renewal failed (tried again): %s", self.name, exc)
                failing = True
            else:
                if failing:
                    log.warning("%s: renewed again", self.name)
                failing = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
