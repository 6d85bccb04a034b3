"""The end of a recording's life: legal holds, erasure by crypto-shredding, retention sweeps.

Erasing a recording destroys its wrapped data key in the live catalog, scrubs the row down to a
tombstone (id, tenant, lawful basis, dates, reason), deletes the blob and appends an audit
entry, in that order: the key row and the audit entry change in one transaction, so an erasure
either happened or did not; a blob left behind by a crash in between is undecryptable and
removed by the next sweep.

A copy of the catalog taken before the erasure (a backup) still holds the wrapped key: it opens
with the KEK version that wrapped it until that version is retired (storage/retirement.py). So
a backed-up recording becomes unreadable when its key version is retired, not at erasure.

Erasing a caller (``erase_subject``), and the sweep once a call record's time is up, remove what
ties a call row to the caller: the sealed number, its keyed hash, and the platform's own call
id (a Twilio CallSid, an ARI channel id), which the platform's call log maps to the number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from storage.catalog import RecordingRow, RecordingStatus
from storage.errors import VaultError
from storage.files import utc_iso
from storage.vault import Vault

log = logging.getLogger(__name__)

ERASABLE = (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE)
# How long a call's caller number is kept once nothing recorded of the call remains (or nothing
# was recorded at all, e.g. the caller declined): enough to answer "was I recorded?" for a while.
CALL_RECORD_DAYS = 30


class LegalHold(VaultError):
    def __init__(self, row: RecordingRow) -> None:
        super().__init__(
            f"recording {row.id} is under legal hold ({row.legal_hold_reason}); release it first"
        )
        self.row = row


class InProgress(VaultError):
    pass


@dataclass
class ErasureReport:
    erased: list[str] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)  # (id, hold reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    # (platform, platform call id) of the call rows scrubbed: removed from the catalog, and
    # still in the platform's own call log (with the number) until erased there.
    platform_calls: list[tuple[str, str]] = field(default_factory=list)


def set_hold(vault: Vault, recording_id: str, *, reason: str, actor: str) -> RecordingRow:
    if not reason.strip():
        raise VaultError("a legal hold needs a reason")
    row = vault.get(recording_id)
    if row.status is RecordingStatus.ERASED:
        raise VaultError(f"recording {recording_id} is erased; there is nothing to hold")
    # The store's own hold first (S3 Object Lock, docs/s3.md): should the catalog then refuse,
    # the data is held once too often, never once too few.
    _mirror_hold(vault, row, held=True)
    with vault.catalog.transaction() as db:
        vault.catalog.update_recording(db, recording_id, legal_hold=1, legal_hold_reason=reason)
        vault.catalog.audit(
            db,
            actor=actor,
            action="recording.hold",
            tenant=row.tenant,
            target=recording_id,
            detail={"reason": reason},
        )
    return vault.get(recording_id)


def release_hold(vault: Vault, recording_id: str, *, reason: str, actor: str) -> RecordingRow:
    row = vault.get(recording_id)
    if not row.legal_hold:
        raise VaultError(f"recording {recording_id} is not under legal hold")
    with vault.catalog.transaction() as db:
        vault.catalog.update_recording(db, recording_id, legal_hold=0, legal_hold_reason=None)
        vault.catalog.audit(
            db,
            actor=actor,
            action="recording.release",
            tenant=row.tenant,
            target=recording_id,
            detail={"reason": reason, "was_held_for": row.legal_hold_reason},
        )
    # Released in the store after the catalog: should the store refuse now, the data stays held
    # there (its deletion at erasure fails and the sweep retries) until released again.
    _mirror_hold(vault, row, held=False)
    return vault.get(recording_id)


def _mirror_hold(vault: Vault, row: RecordingRow, *, held: bool) -> None:
    if not row.blob_path:
        return
    try:
        vault.blob_store(row.blob_path).set_legal_hold(row.blob_path, held)
    except OSError as exc:
        verb = "set" if held else "released"
        raise VaultError(
            f"recording {row.id}: the object store's legal hold could not be {verb} ({exc}); "
            "the catalog's is " + ("not set" if held else "released") + ": try again"
        ) from None


def erase(
    vault: Vault, recording_id: str, *, reason: str, actor: str, action: str = "recording.erased"
) -> RecordingRow:
    """Crypto-shred one recording. Raises LegalHold or InProgress and then changes nothing."""
    if not reason.strip():
        raise VaultError("an erasure needs a reason")
    row = vault.get(recording_id)
    if row.legal_hold:
        raise LegalHold(row)
    if row.status is RecordingStatus.RECORDING:
        raise InProgress(
            f"recording {recording_id} is still being recorded; erase it once the call has ended"
        )
    if row.status is RecordingStatus.ERASED:
        return row
    now = utc_iso(vault.clock())
    with vault.catalog.transaction() as db:
        changed = vault.catalog.update_recording(
            db,
            recording_id,
            expect_status=row.status,
            status=RecordingStatus.ERASED.value,
            status_reason=reason,
            wrapped_dek=None,
            consent_evidence=None,
            call_id=None,
            blob_path=None,
            blob_digest=None,
            erased_at=now,
            erasure_reason=reason,
        )
        if not changed:  # it changed under us (another process): leave it to them
            raise VaultError(f"recording {recording_id} changed while being erased; try again")
        vault.catalog.audit(
            db,
            actor=actor,
            action=action,
            tenant=row.tenant,
            target=recording_id,
            detail={"reason": reason, "status_was": row.status.value},
        )
    vault.catalog.checkpoint()
    # The key is gone: the blob is ciphertext no one can open. Deleting it is tidiness, and if
    # the disk or the object store refuses now, the next sweep's remove_orphan_blobs does it.
    if row.blob_path:
        try:
            vault.blob_store(row.blob_path).delete(row.blob_path)
        except OSError as exc:
            log.warning(
                "recording %s: erased; its blob stays until the next sweep: %s", row.id, exc
            )
    return vault.get(recording_id)


def erase_many(
    vault: Vault, rows: Iterable[RecordingRow], *, reason: str, actor: str, action: str
) -> ErasureReport:
    report = ErasureReport()
    for row in rows:
        if row.status is RecordingStatus.ERASED:
            continue
        if row.legal_hold:
            report.held.append((row.id, row.legal_hold_reason or ""))
            continue
        try:
            erase(vault, row.id, reason=reason, actor=actor, action=action)
        except InProgress as exc:
            report.skipped.append((row.id, str(exc)))
            continue
        except VaultError as exc:
            report.skipped.append((row.id, str(exc)))
            continue
        report.erased.append(row.id)
    return report


@dataclass
class SweepReport:
    now: str
    dry_run: bool
    purged: list[RecordingRow] = field(default_factory=list)
    held: list[RecordingRow] = field(default_factory=list)
    orphans_removed: int = 0
    calls_scrubbed: int = 0


def sweep(
    vault: Vault,
    *,
    now: datetime,
    dry_run: bool,
    actor: str,
    call_record_days: int = CALL_RECORD_DAYS,
) -> SweepReport:
    """Purge every finished recording whose retention date has passed, except held ones."""
    stamp = utc_iso(now)
    report = SweepReport(stamp, dry_run)
    for row in vault.catalog.due_for_retention(stamp):
        (report.held if row.legal_hold else report.purged).append(row)
    if dry_run:
        return report
    done = erase_many(
        vault,
        report.purged,
        reason=f"retention period ended ({stamp})",
        actor=actor,
        action="recording.purged",
    )
    purged_ids = set(done.erased)
    report.purged = [r for r in report.purged if r.id in purged_ids]
    report.orphans_removed = remove_orphan_blobs(vault)
    report.calls_scrubbed = scrub_stale_calls(vault, before=now - timedelta(days=call_record_days))
    vault.audit(
        actor=actor,
        action="retention.sweep",
        detail={
            "now": stamp,
            "purged": len(report.purged),
            "held": len(report.held),
            "orphans_removed": report.orphans_removed,
            "calls_scrubbed": report.calls_scrubbed,
        },
    )
    return report


def scrub_stale_calls(vault: Vault, *, before: datetime) -> int:
    """Storage limitation for call records: once a call is older than ``before`` and none of
    its recordings is still kept, its caller's number (sealed and hashed) and the platform's
    call id (which the platform's call log maps to the number) have no purpose left and are
    removed; times and the outcome stay."""
    cutoff = utc_iso(before)
    now = utc_iso(vault.clock())
    with vault.catalog.transaction() as db:
        count = db.execute(
            "UPDATE calls SET caller_hash = NULL, caller_sealed = NULL, caller_key_ref = NULL,"
            " platform_call_id = NULL, erased_at = ? WHERE started_at < ?"
            " AND (caller_hash IS NOT NULL OR caller_sealed IS NOT NULL"
            " OR platform_call_id IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM recordings r"
            " WHERE r.call_id = calls.id AND r.status IN ('recording', 'complete', 'incomplete'))",
            (now, cutoff),
        ).rowcount
    if count:
        vault.catalog.checkpoint()
    return count


def remove_orphan_blobs(vault: Vault) -> int:
    """Blobs no live recording points at (an erasure interrupted after its commit). The store
    asks for the live ones after it has looked at what it holds, so a recording started in
    between (its row is committed before its first byte is written) is never taken for one."""

    def live() -> set[str]:
        return {
            r.blob_path
            for r in vault.list()
            if r.blob_path and r.status is not RecordingStatus.ERASED
        }

    return sum(store.remove_orphans(live) for store in vault.blob_stores())


# -- one data subject -----------------------------------------------------------------------------
@dataclass
class SubjectCalls:
    tenant: str
    calls: list[str]  # call ids
    recordings: list[RecordingRow]


def find_subject(vault: Vault, caller: str, tenants: Iterable[str]) -> list[SubjectCalls]:
    """Every call and recording of one caller (``caller`` normalised, e.g. E.164), per tenant.

    Callers are found through the keyed hash of their number: a tenant's lookup key is needed,
    so only tenants that have keys (that have recorded something) can have matches.
    """
    found = []
    for tenant in tenants:
        if not vault.keyring.has_tenant(tenant):
            continue
        calls = vault.catalog.calls_by_caller(tenant, vault.caller_hash(tenant, caller))
        if not calls:
            continue
        recordings = [r for c in calls for r in vault.catalog.recordings_of_call(c["id"])]
        found.append(SubjectCalls(tenant, [c["id"] for c in calls], recordings))
    return found


def erase_subject(
    vault: Vault, subject: list[SubjectCalls], *, reason: str, actor: str
) -> ErasureReport:
    """Erase every recording of a caller, then the personal fields of their calls.

    A call keeps its caller fields while one of its recordings is held back (legal hold, or
    still being recorded): the evidence a hold protects includes whose call it was.
    """
    report = ErasureReport()
    for group in subject:
        part = erase_many(
            vault, group.recordings, reason=reason, actor=actor, action="recording.erased"
        )
        report.erased += part.erased
        report.held += part.held
        report.skipped += part.skipped
        kept = {rid for rid, _ in part.held} | {rid for rid, _ in part.skipped}
        now = utc_iso(vault.clock())
        scrubbed = 0
        with vault.catalog.transaction() as db:
            for call_id in group.calls:
                if any(r.call_id == call_id and r.id in kept for r in group.recordings):
                    continue
                row = db.execute(
                    "SELECT platform, platform_call_id FROM calls WHERE id = ?", (call_id,)
                ).fetchone()
                if row is not None and row["platform_call_id"]:
                    report.platform_calls.append((row["platform"], row["platform_call_id"]))
                db.execute(
                    "UPDATE calls SET caller_hash = NULL, caller_sealed = NULL,"
                    " caller_key_ref = NULL, platform_call_id = NULL, erased_at = ? WHERE id = ?",
                    (now, call_id),
                )
                scrubbed += 1
            vault.catalog.audit(
                db,
                actor=actor,
                action="subject.erased",
                tenant=group.tenant,
                detail={
                    "reason": reason,
                    "calls": len(group.calls),
                    "calls_scrubbed": scrubbed,
                    "recordings_erased": len(part.erased),
                    "recordings_held": len(part.held) + len(part.skipped),
                },
            )
        vault.catalog.checkpoint()
    return report
