"""The service's side of the anchored audit head (storage/audit.py says why it is needed).

At start, every ``[audit] head_interval_minutes`` when the chain has grown, and at shutdown,
the chain's head goes to the heads file and to the log (one ``audit head`` line, so a shipped
JSON log holds the heads too). A head that cannot be written is logged as an error and counted
(``/metrics``), and ``/healthz`` shows the schedule failing; the service goes on, as calls
matter more than one publication.

At start the newest published head is looked up in the chain (one row, not a full
verification): a cut tail is logged as an error at once, not only at the next ``ivr audit
verify``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from ivr.supervision import LoopHealth, in_thread
from storage.audit import PublishedHead, publish_head, read_published_heads
from storage.vault import Vault

log = logging.getLogger(__name__)


class HeadPublisher:
    def __init__(self, vault: Vault, path: Path, clock: Callable[[], datetime]) -> None:
        self.vault = vault
        self.path = path
        self.clock = clock
        self.last: PublishedHead | None = None  # published by this process
        self.errors = 0  # publications that could not be written to the file

    def check_published(self) -> str | None:
        """Whether the newest head in the file is still in the chain; the problem if not."""
        heads = read_published_heads(self.path)
        if not heads:
            return None
        newest = heads[-1]
        if self.vault.catalog.audit_link(newest.seq) == newest.head:
            return None
        problem = (
            f"the audit head published at {newest.at} (entry {newest.seq}, "
            f"{newest.head[:16]}…) is no longer in the chain: entries were cut off; "
            "run ivr audit verify"
        )
        log.error("%s", problem)
        return problem

    def publish(self, why: str, *, force: bool = False) -> PublishedHead | None:
        """Publish the head unless this process already published it (``force``: anyway).
        OSError if the file cannot be written (counted; the head is in the log all the same)."""
        seq, head = self.vault.catalog.audit_head()
        last = self.last
        if not force and last is not None and (last.seq, last.head) == (seq, head):
            return None
        at = self.clock()
        log.info("audit head: entry %d, link %s (%s)", seq, head, why)
        try:
            self.last = publish_head(self.path, seq, head, at=at, why=why)
        except OSError:
            self.errors += 1
            raise
        return self.last


async def publish_heads(publisher: HeadPublisher, interval: float, health: LoopHealth) -> None:
    """Publish on a schedule; a failed round is reported and the next one tried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await in_thread(publisher.publish, "schedule")
        except Exception as exc:  # like the sweeper: a bad round must not end the schedule
            health.round_failed(exc, f"publishing the audit head to {publisher.path}")
            continue
        health.round_ok()


HEAD_PUBLISHER = web.AppKey("audit_head_publisher", HeadPublisher)
