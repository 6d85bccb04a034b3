"""Verifying the audit chain.

Each entry's link is an HMAC, with the vault's audit key (sealed under the master key), of the
previous link and its own fields: an edited entry breaks its own link, a removed or reordered
entry breaks the link of the one after it, and nobody without the master key can write links
that verify, so the chain cannot be rebuilt after an edit. Entries from before the chain was
keyed carry plain SHA-256 links and are accepted only ahead of the first keyed one.

What a chain cannot show by itself is a cut-off tail (the newest entries deleted, even all of
them). So its head, the newest entry's number and link, is published outside the catalog: the
service appends it to a heads file (:func:`publish_head`, one line ``<time> <seq> <link>
<why>``, opened append-only, 0600, synced) on a schedule and at shutdown, and logs it.
:func:`verify` checks every published head: the entry of that number must still be there with
that link. An appended older line cannot hide a cut, as the later lines still count; a head
kept anywhere else can be given as ``expect_head``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage.catalog import GENESIS_HASH, KEYED, AuditEvent, Catalog, audit_hash
from storage.files import open_private, utc_iso

HEADS_FILE_NAME = "audit-heads.log"  # in the data directory, unless configured elsewhere
_HEAD_LINE = re.compile(r"(\S+) ([0-9]{1,18}) ([0-9a-f]{64})(?: (\S+))?")


def heads_file(configured: Path | None, data_dir: Path) -> Path:
    """``[audit] head_file`` if set, else the default in the data directory."""
    return configured if configured is not None else data_dir / HEADS_FILE_NAME


@dataclass(frozen=True, slots=True)
class PublishedHead:
    """One line of the heads file: at ``at`` the chain's newest entry was ``seq``, link ``head``."""

    at: str
    seq: int
    head: str
    why: str = ""

    def line(self) -> str:
        return f"{self.at} {self.seq} {self.head} {self.why or '-'}\n"


def publish_head(path: Path, seq: int, head: str, *, at: datetime, why: str) -> PublishedHead:
    """Append one head to ``path`` (created 0600), opened append-only and synced before return."""
    entry = PublishedHead(utc_iso(at), seq, head, why)
    fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, entry.line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read_published_heads(path: Path) -> list[PublishedHead]:
    """Every well-formed line of the heads file, oldest first; [] when there is none. A torn
    last line (a crash mid-write) is skipped."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    heads = []
    for line in text.splitlines():
        if match := _HEAD_LINE.fullmatch(line.strip()):
            why = match[4] if match[4] and match[4] != "-" else ""
            heads.append(PublishedHead(match[1], int(match[2]), match[3], why))
    return heads


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int
    what: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.what}"


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    entries: int
    head: str
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    events: list[AuditEvent],
    *,
    key: bytes | None = None,
    keyed_after: int = 0,
    expect_head: str | None = None,
    published: Iterable[PublishedHead] = (),
) -> AuditVerdict:
    """``keyed_after``: entries up to this seq predate the audit key and may be unkeyed;
    ``published``: heads published earlier, each of which must still be in the chain."""
    problems: list[AuditProblem] = []
    prev = GENESIS_HASH
    last_seq = 0
    for event in events:
        keyed = event.alg == KEYED
        if keyed and key is None:
            problems.append(AuditProblem(event.seq, "is keyed, and no audit key was given"))
        if not keyed and event.seq > keyed_after:
            problems.append(
                AuditProblem(event.seq, "has an unkeyed link where a keyed one is due (forged)")
            )
        if event.seq != last_seq + 1:
            problems.append(
                AuditProblem(event.seq, f"entries {last_seq + 1}..{event.seq - 1} are missing")
            )
        if event.prev_hash != prev:
            problems.append(
                AuditProblem(event.seq, "does not follow the entry before it (removed or moved)")
            )
        expected = audit_hash(
            event.prev_hash,
            event.at,
            event.actor,
            event.action,
            event.tenant,
            event.target,
            event.detail,
            key if keyed else None,
        )
        if expected != event.hash and not (keyed and key is None):
            problems.append(AuditProblem(event.seq, "was edited: its hash does not match"))
        prev = event.hash
        last_seq = event.seq
    head = events[-1].hash if events else GENESIS_HASH
    if expect_head is not None and expect_head not in {e.hash for e in events}:
        problems.append(AuditProblem(last_seq, f"the expected head {expect_head[:16]}… is gone"))
    by_seq = {e.seq: e.hash for e in events}
    gone = [p for p in published if by_seq.get(p.seq) != p.head]
    if gone:
        newest = max(gone, key=lambda p: p.seq)
        more = f" ({len(gone) - 1} earlier published head(s) gone too)" if len(gone) > 1 else ""
        what = (
            f"the head published at {newest.at} ({newest.head[:16]}…) is gone: "
            + (
                f"the chain ends at entry {last_seq}, so its tail was cut"
                if newest.seq > last_seq
                else "this entry is another one, so the chain was cut and written on"
            )
            + more
        )
        problems.append(AuditProblem(newest.seq, what))
    return AuditVerdict(len(events), head, tuple(problems))


def verify_catalog(
    catalog: Catalog,
    *,
    expect_head: str | None = None,
    published: Iterable[PublishedHead] = (),
) -> AuditVerdict:
    return verify(
        catalog.audit_events(),
        key=catalog.audit_key,
        keyed_after=catalog.audit_keyed_after,
        expect_head=expect_head,
        published=published,
    )
