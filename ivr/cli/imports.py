"""``ivr recordings import``: an audio file recorded into the vault, with its caller and the
evidence of its lawful basis."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, EXIT_OK, CommandFailed, actor, emit, open_vault
from ivr.policy import LawfulBasis
from storage.catalog import RecordingStatus


def _fmt_duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of days ≥ 1, got {text!r}")
    return int(text)


def _caller(args: argparse.Namespace) -> str | None:
    """The caller's number in E.164, normalised as a subject request's is, so that `ivr subject`
    finds the recording by the same number."""
    if args.caller is None:
        if args.region is not None:
            raise CommandFailed("--region is for --caller: a national number's country")
        return None
    from ivr.gdpr.subject import SubjectError, normalise_phone

    try:
        return normalise_phone(args.caller, args.region)
    except SubjectError as exc:
        raise CommandFailed(f"--caller: {exc}") from None


def _evidence(args: argparse.Namespace) -> Any:
    from ivr.gdpr.recording_files import ImportEvidence

    if args.evidence is not None:
        return ImportEvidence(text=args.evidence)
    if args.evidence_file is not None:
        return ImportEvidence.from_file(Path(args.evidence_file))
    if args.no_evidence_reason is not None:
        return ImportEvidence(no_evidence_reason=args.no_evidence_reason)
    return None


def cmd_recordings_import(args: argparse.Namespace) -> int:
    from ivr.gdpr.recording_files import check_import, import_wav, load_for_import

    basis = LawfulBasis(args.lawful_basis)
    caller = _caller(args)
    evidence = _evidence(args)
    check_import(basis, evidence)  # before the audio is read
    audio = load_for_import(Path(args.file))
    with open_vault(args, create=True) as vault:
        row = import_wav(
            vault,
            audio,
            tenant=args.tenant,
            lawful_basis=basis,
            purpose=args.purpose,
            actor=actor(),
            retention_days=args.retention_days,
            caller=caller,
            evidence=evidence,
        )
    emit(
        args,
        row.public(),
        lambda: (
            f"imported {args.file} as {row.id} ({row.status.value}, "
            f"{_fmt_duration(row.duration_ms)}, {len(row.tracks)} track(s), "
            f"{row.lawful_basis}" + (f", caller {caller}" if caller else "") + ")"
        ),
    )
    if row.status is not RecordingStatus.COMPLETE:
        raise CommandFailed(f"recording {row.id} ended {row.status.value}: {row.status_reason}")
    return EXIT_OK


def add_parser(rsub: Any, common: argparse.ArgumentParser, data_out: Any) -> None:
    imp = rsub.add_parser(
        "import", parents=[common, data_out], help="record an audio file into the vault"
    )
    imp.add_argument("file", help="audio file (WAV or anything libsndfile reads; 1–2 channels)")
    imp.add_argument("--tenant", required=True, help="the controller the recording belongs to")
    imp.add_argument(
        "--lawful-basis",
        required=True,
        choices=[b.value for b in LawfulBasis],
        help="GDPR Art. 6 lawful basis (consent needs evidence, or --no-evidence-reason)",
    )
    imp.add_argument("--purpose", required=True, help="why it is recorded, e.g. quality")
    imp.add_argument(
        "--caller",
        metavar="NUMBER",
        help="the caller's number, e.g. +46701234567, so subject requests find the recording",
    )
    imp.add_argument("--region", help="--caller's country for a national number, e.g. SE")
    proof = imp.add_mutually_exclusive_group()
    proof.add_argument(
        "--evidence",
        metavar="TEXT",
        help="the evidence of the lawful basis, e.g. how consent was given",
    )
    proof.add_argument(
        "--evidence-file", metavar="FILE", help="the evidence as a UTF-8 text file (≤ 64 KiB)"
    )
    proof.add_argument(
        "--no-evidence-reason",
        metavar="TEXT",
        help="why there is no evidence (kept with the recording and audited)",
    )
    imp.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration, for the tenant's key custody (env {CONFIG_ENV})",
    )
    imp.add_argument(
        "--retention-days",
        type=_positive_int,
        help="keep it this long (default: the lawful basis's default period)",
    )
    imp.set_defaults(func=cmd_recordings_import)
