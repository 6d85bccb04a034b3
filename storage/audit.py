"""Verifying the audit chain.

Each entry's link is an HMAC, with the vault's audit key (sealed under the master key), of the
previous link and its own fields: an edited entry breaks its own link, a removed or reordered
entry breaks the link of the one after it, and nobody without the master key can write links
that verify, so the chain cannot be rebuilt after an edit. Entries from before the chain was
keyed carry plain SHA-256 links and are accepted only ahead of the first keyed one. What a chain
cannot show by itself is a cut-off tail: keep the head (``ivr audit show --json`` prints it)
somewhere else and verify against it with ``expect_head``.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.catalog import GENESIS_HASH, KEYED, AuditEvent, Catalog, audit_hash


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
) -> AuditVerdict:
    """``keyed_after``: entries up to this seq predate the audit key and may be unkeyed."""
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
    return AuditVerdict(len(events), head, tuple(problems))


def verify_catalog(catalog: Catalog, *, expect_head: str | None = None) -> AuditVerdict:
    return verify(
        catalog.audit_events(),
        key=catalog.audit_key,
        keyed_after=catalog.audit_keyed_after,
        expect_head=expect_head,
    )
