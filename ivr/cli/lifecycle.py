"""The GDPR lifecycle commands: holds, deletion, retention, subject requests, the audit log."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, EXIT_FAILURE, EXIT_OK, CommandFailed, actor, emit, open_vault
from ivr.gdpr.subject import SubjectError, held_back_message, normalise_phone
from storage import lifecycle
from storage.audit import (
    HEADS_FILE_NAME,
    AuditProblem,
    PublishedHead,
    heads_file,
    read_published_heads,
    verify,
)
from storage.catalog import AuditEvent, CatalogError, RecordingRow
from storage.errors import VaultError
from storage.files import parse_utc, utc_iso


def _when(text: str) -> datetime:
    try:
        moment = parse_utc(text) if "T" in text else parse_utc(text + "T00:00:00Z")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time like 2026-11-28T12:00:00Z or 2026-11-28"
        ) from None
    return moment


def _date(text: str) -> str:
    from datetime import date

    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2027-01-01") from None


def _config(args: argparse.Namespace) -> Any:
    from ivr.config import load_config

    return load_config(Path(args.config) if args.config else None)


def _tenants(args: argparse.Namespace, vault: Any) -> list[str]:
    if args.tenant:
        return [args.tenant]
    return sorted({k.tenant for k in vault.keyring.list()})


def _private_key(args: argparse.Namespace) -> Any:
    if not getattr(args, "private_key", None):
        return None
    from storage.custody import load_private_key

    return load_private_key(Path(args.private_key))


def _phone(args: argparse.Namespace) -> str:
    try:
        return normalise_phone(args.phone, args.region)
    except SubjectError as exc:
        raise CommandFailed(str(exc)) from None


# -- recordings hold / release / delete ----------------------------------------------------------
def _attempt(args: argparse.Namespace, action: str, operation: Any) -> Any:
    """One lifecycle operation on ``args.id``; a refused attempt is audited too, then reported."""
    with open_vault(args) as vault:
        try:
            return operation(vault, args.id, reason=args.reason, actor=actor())
        except (VaultError, CatalogError) as exc:
            vault.audit(
                actor=actor(),
                action=f"{action}.refused",
                target=args.id,
                detail={"reason": args.reason, "error": str(exc)},
            )
            raise


def cmd_hold(args: argparse.Namespace) -> int:
    row = _attempt(args, "recording.hold", lifecycle.set_hold)
    emit(args, row.public(), lambda: f"{row.id}: under legal hold ({row.legal_hold_reason})")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    row = _attempt(args, "recording.release", lifecycle.release_hold)
    emit(args, row.public(), lambda: f"{row.id}: legal hold released")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    row = _attempt(args, "recording.erase", lifecycle.erase)
    emit(
        args,
        row.public(),
        lambda: f"{row.id}: erased (data key destroyed, audio deleted); tombstone kept",
    )
    return EXIT_OK


# -- retention ------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    now = args.now or datetime.now(UTC)
    # The service's own sweep keeps call records as the configuration says; so does this one.
    from ivr.config import load_config

    days = load_config(Path(args.config) if args.config else None).call_record_days
    with open_vault(args) as vault:
        report = lifecycle.sweep(
            vault, now=now, dry_run=args.dry_run, actor=actor(), call_record_days=days
        )
    verb = "would purge" if report.dry_run else "purged"
    data = {
        "now": report.now,
        "dry_run": report.dry_run,
        "purged": [_brief(r) for r in report.purged],
        "held": [_brief(r) for r in report.held],
        "orphan_blobs_removed": report.orphans_removed,
        "calls_scrubbed": report.calls_scrubbed,
        "call_record_days": days,
    }

    def text() -> str:
        lines = [f"retention sweep at {report.now}: {verb} {len(report.purged)} recording(s)"]
        lines += [
            f"  {verb} {r.id} ({r.tenant}, {r.lawful_basis}, kept until {r.retention_until})"
            for r in report.purged
        ]
        lines += [f"  held   {r.id}: legal hold ({r.legal_hold_reason})" for r in report.held]
        return "\n".join(lines)

    emit(args, data, text)
    return EXIT_OK


def cmd_retention_report(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        rows = vault.list(tenant=args.tenant)
    now = utc_iso(datetime.now(UTC))
    # Each kept recording that has a retention date, with that date.
    live = [
        (r.retention_until, r)
        for r in rows
        if r.retention_until and r.status.value in ("complete", "incomplete")
    ]
    overdue = [_brief(r) for until, r in live if until <= now and not r.legal_hold]
    held = [_brief(r) for _, r in live if r.legal_hold]
    upcoming = [_brief(r) for _, r in sorted(live, key=lambda d: d[0])[:10]]
    data = {"now": now, "recordings": len(live), "overdue": overdue, "held": held, "next": upcoming}

    def text() -> str:
        lines = [
            f"{len(live)} recording(s) kept; {len(overdue)} overdue, {len(held)} under legal hold"
        ]
        lines += [f"  next: {x['id']} until {x['retention_until']}" for x in upcoming]
        return "\n".join(lines)

    emit(args, data, text)
    return EXIT_OK


def _brief(row: RecordingRow) -> dict[str, object]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "lawful_basis": row.lawful_basis,
        "retention_until": row.retention_until,
        "legal_hold": row.legal_hold,
        "legal_hold_reason": row.legal_hold_reason,
    }


# -- subject requests -----------------------------------------------------------------------------
def cmd_subject_erase(args: argparse.Namespace) -> int:
    from ivr.gdpr import subject

    phone = _phone(args)
    with open_vault(args) as vault:
        tenants = _tenants(args, vault)
        report = subject.erase(vault, phone, tenants, reason=args.reason, actor=actor())
    kept = held_back_message(report)
    data = {
        "erased": report.erased,
        "held": report.held,
        "skipped": report.skipped,
        "platform_calls": [{"platform": p, "id": cid} for p, cid in report.platform_calls],
    }

    def text() -> str:
        lines = [f"erased {len(report.erased)} recording(s) of this caller"]
        lines += [f"  erased {rid}" for rid in report.erased]
        lines += [f"  {line}" for line in kept]
        if report.platform_calls:
            lines.append(
                "  removed from the catalog; the platform's own call log still maps these "
                "call ids to the number, so erase them there too:"
            )
            lines += [f"    {p} {cid}" for p, cid in report.platform_calls]
        return "\n".join(lines)

    emit(args, data, text)
    return EXIT_OK if not kept else EXIT_FAILURE


def cmd_subject_export(args: argparse.Namespace) -> int:
    from ivr.gdpr import subject

    phone = _phone(args)
    config = _config(args)
    out = Path(args.output)
    if out.is_dir():
        raise CommandFailed(f"{out} is a directory; give a file name for the zip")
    with open_vault(args) as vault:
        result = subject.export(
            vault,
            phone,
            _tenants(args, vault),
            out,
            actor=actor(),
            reason=args.reason,
            config=config,
            language=args.language,
            now=utc_iso(datetime.now(UTC)),
            private_key=_private_key(args),
            processor=subject.Processor(args.processor_name, args.processor_contact),
        )
    data = result.as_dict()

    def text() -> str:
        lines = [
            f"wrote {result.path}: {data['calls']} call(s), {data['calls_without_recording']} "
            f"without a recording, {result.recordings} recording(s); summary in "
            f"{data['language']} ({data['language_from']})"
        ]
        lines += [
            f"  {rid}: held, sealed to {ref} (metadata only; give --private-key for its audio)"
            for rid, ref in result.sealed
        ]
        lines += [f"  not stated: {gap['kind']} {gap['facts']}" for gap in data["gaps"]]
        return "\n".join(lines)

    emit(args, data, text)
    return EXIT_OK


# -- audit ----------------------------------------------------------------------------------------
def _heads_file(args: argparse.Namespace, events: list[AuditEvent]) -> tuple[Path, str | None]:
    """The heads file to check against, and the entry that names it if the service did: the
    one given, the configuration's, the one the service last said it publishes to (its
    ``config.loaded`` entry), or the default in the data directory."""
    if args.head_file:
        return Path(args.head_file), None
    if args.config:
        return heads_file(_config(args).audit_head_file, Path(args.data_dir)), None
    for event in reversed(events):
        named = event.detail.get("audit_head_file") if event.action == "config.loaded" else None
        if isinstance(named, str):
            return Path(named), f"entry {event.seq}"
    return Path(args.data_dir) / HEADS_FILE_NAME, None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        events = vault.catalog.audit_events()
        published: list[PublishedHead] = []
        path, named_by = None, None
        if not args.no_published_head:
            path, named_by = _heads_file(args, events)
            published = read_published_heads(path)
        verdict = verify(
            events,
            key=vault.catalog.audit_key,
            keyed_after=vault.catalog.audit_keyed_after,
            expect_head=args.expect_head,
            published=published,
        )
    problems = list(verdict.problems)
    if path is not None and named_by is not None and not published:
        problems.append(
            AuditProblem(
                verdict.entries,
                f"the service publishes heads to {path} ({named_by}), and it holds none",
            )
        )
    newest = published[-1] if published else None
    data = {
        "ok": not problems,
        "entries": verdict.entries,
        "head": verdict.head,
        "problems": [{"seq": p.seq, "what": p.what} for p in problems],
        "published_heads": None
        if path is None
        else {
            "file": str(path),
            "checked": len(published),
            "newest": None if newest is None else {"at": newest.at, "seq": newest.seq},
        },
    }

    def text() -> str:
        if path is None:
            against = "published heads not checked (--no-published-head)"
        elif newest is None:
            against = f"no published head in {path}: a cut-off tail cannot be seen"
        else:
            against = (
                f"checked against {len(published)} published head(s) in {path}, "
                f"the newest entry {newest.seq} at {newest.at}"
            )
        if not problems:
            return f"audit chain intact: {verdict.entries} entries, head {verdict.head}\n{against}"
        return "\n".join(["audit chain BROKEN:"] + [f"  {p}" for p in problems] + [against])

    emit(args, data, text)
    return EXIT_OK if not problems else EXIT_FAILURE


def cmd_audit_show(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        events = vault.catalog.audit_events()
    if args.tenant:
        events = [e for e in events if e.tenant == args.tenant]
    events = events[-args.limit :] if args.limit else events
    data = [
        {
            "seq": e.seq,
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "tenant": e.tenant,
            "target": e.target,
            "detail": e.detail,
            "hash": e.hash,
        }
        for e in events
    ]

    def text() -> str:
        return (
            "\n".join(
                f"{e.seq:>6} {e.at} {e.actor:<16} {e.action:<22} {e.tenant or '-':<10} "
                f"{e.target or '-'} {e.detail.get('reason') or ''}"
                for e in events
            )
            or "no audit entries"
        )

    emit(args, data, text)
    return EXIT_OK


# -- admin API tokens ----------------------------------------------------------------------------
def cmd_api_token(args: argparse.Namespace) -> int:
    import secrets

    from ivr.api import token_digest

    token = "ivr_" + secrets.token_urlsafe(32)
    snippet = (
        f'[[api_tokens]]\ntenant = "{args.tenant}"\nname = "{args.name}"\n'
        f'role = "{args.role}"\ntoken_sha256 = "{token_digest(token)}"\n'
        + (f"expires = {args.expires}\n" if args.expires else "")
    )
    emit(
        args,
        {"token": token, "token_sha256": token_digest(token), "config": snippet},
        lambda: (
            f"token (give it to its holder; it is not stored anywhere):\n  {token}\n\n"
            f"add to the configuration:\n{snippet}"
        ),
    )
    return EXIT_OK


# -- parsers --------------------------------------------------------------------------------------
def add_parsers(top: Any, rsub: Any, common: argparse.ArgumentParser, data_out: Any) -> None:
    hold = rsub.add_parser("hold", parents=[common, data_out], help="put a legal hold on one")
    hold.add_argument("id")
    hold.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    hold.set_defaults(func=cmd_hold)
    release = rsub.add_parser("release", parents=[common, data_out], help="lift a legal hold")
    release.add_argument("id")
    release.add_argument("--reason", default="hold released by operator")
    release.set_defaults(func=cmd_release)
    delete = rsub.add_parser(
        "delete", parents=[common, data_out], help="erase one recording (crypto-shred)"
    )
    delete.add_argument("id")
    delete.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    delete.set_defaults(func=cmd_delete)

    ret = top.add_parser("retention", help="purge what the retention policy no longer allows")
    rs = ret.add_subparsers(dest="action", required=True, metavar="ACTION")
    sweep = rs.add_parser("sweep", parents=[common, data_out], help="purge expired recordings")
    sweep.add_argument("--dry-run", action="store_true", help="report, change nothing")
    sweep.add_argument("--now", type=_when, help="pretend it is this time (UTC)")
    sweep.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file, for [retention] call_record_days (env {CONFIG_ENV}; "
        "default: the embedded demo's)",
    )
    sweep.set_defaults(func=cmd_sweep)
    report = rs.add_parser("report", parents=[common, data_out], help="what is due when")
    report.add_argument("--tenant")
    report.set_defaults(func=cmd_retention_report)

    subj = top.add_parser("subject", help="data subject requests (access, erasure)")
    ss = subj.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, helptext in (
        ("erase", cmd_subject_erase, "erase every recording of one caller"),
        ("export", cmd_subject_export, "everything about one caller, as a zip (Art. 15)"),
    ):
        p = ss.add_parser(name, parents=[common, data_out], help=helptext)
        p.add_argument("--phone", required=True, help="the caller's number, e.g. +46701234567")
        p.add_argument("--region", help="country for a national number, e.g. SE")
        p.add_argument("--tenant", help="only this controller's recordings (default: all)")
        p.set_defaults(func=func)
        if name == "erase":
            p.add_argument("--reason", required=True, help="e.g. 'Art. 17 request of 2026-11-28'")
        else:
            p.add_argument("-o", "--output", required=True, help="zip file to write")
            p.add_argument("--reason", default="subject access request (Art. 15)")
            p.add_argument("--language", choices=("en", "sv"), help="summary language")
            p.add_argument(
                "--private-key",
                help="the tenant's private key file, for recordings sealed to its public key",
            )
            p.add_argument(
                "--config",
                default=os.environ.get(CONFIG_ENV),
                help="configuration (controllers, lines, retention: what the export states)",
            )
            p.add_argument(
                "--processor-name",
                help="the processor (the contact centre operating this service) to name as a "
                "recipient (default: described, not named)",
            )
            p.add_argument("--processor-contact", help="the processor's contact details")

    apip = top.add_parser("api", help="admin API tokens")
    aps = apip.add_subparsers(dest="action", required=True, metavar="ACTION")
    tok = aps.add_parser("token", parents=[data_out], help="make a new bearer token")
    tok.add_argument("--tenant", required=True)
    tok.add_argument("--role", required=True, choices=("dpo", "supervisor", "admin"))
    tok.add_argument("--name", default="token", help="who or what holds it")
    tok.add_argument("--expires", type=_date, help="date the token stops working, e.g. 2027-01-01")
    tok.set_defaults(func=cmd_api_token)

    audit = top.add_parser("audit", help="the tamper-evident audit log")
    aus = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = aus.add_parser("verify", parents=[common, data_out], help="check the hash chain")
    verify.add_argument(
        "--expect-head", help="a head hash kept elsewhere earlier: proves nothing was cut off"
    )
    verify.add_argument(
        "--head-file",
        help="the published heads to check against (default: [audit] head_file of --config, "
        "else where the service said it publishes them, else DATA_DIR/audit-heads.log)",
    )
    verify.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file, for its [audit] head_file (env {CONFIG_ENV})",
    )
    verify.add_argument(
        "--no-published-head",
        action="store_true",
        help="do not check the published heads (a cut-off tail then goes unseen)",
    )
    verify.set_defaults(func=cmd_audit_verify)
    show = aus.add_parser("show", parents=[common, data_out], help="list entries")
    show.add_argument("--tenant")
    show.add_argument("--limit", type=int, default=0, help="only the last N entries")
    show.set_defaults(func=cmd_audit_show)
