"""``ivr vault migrate``: move a single-node vault to a PostgreSQL catalog and an object store
(storage/migrate.py, docs/migrate.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, EXIT_FAILURE, EXIT_OK, CommandFailed, actor, emit, open_vault
from storage.blob_url import S3Location

KEYRING_NOTE = (
    "the keyring was not copied: every node on the target must open this keyring "
    "({keyring}) with the same master key"
)


def cmd_vault_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import migrate
    from storage.vault import Vault

    if not args.to_catalog.startswith(("postgresql://", "postgres://")):
        raise CommandFailed("--to-catalog must be a postgresql:// URL")
    try:
        blobs = S3Location.parse(args.to_blobs).url
    except ValueError as exc:
        raise CommandFailed(f"--to-blobs: {exc}") from None
    quiet = args.quiet

    def progress(done: int, total: int, recording_id: str, what: str) -> None:
        if not quiet:
            print(f"migrate: {done}/{total} {recording_id} {what}", file=sys.stderr, flush=True)

    with open_vault(args) as source:
        keyring = str(source.keyring.path)
        with Vault(
            Path(args.data_dir),
            create=False,
            catalog_url=args.to_catalog,
            blob_url=blobs,
            recover=False,
        ) as target:
            report = migrate(source, target, actor=actor(), progress=progress)
    data: dict[str, Any] = {**report.as_dict(), "keyring": KEYRING_NOTE.format(keyring=keyring)}

    def text() -> str:
        lines = [
            (
                f"migrated to {report.target_catalog} and {report.target_blobs}"
                if report.state != "complete"
                else f"already migrated to {report.target_catalog} and {report.target_blobs}"
            )
            + f" in {report.seconds:.1f} s: {report.recordings} recordings ({report.copied} "
            f"copied now, {report.present} already there, {report.rows_only} without audio), "
            f"{report.verified} verified by decryption from the target, "
            f"{report.ciphertext_only} byte for byte (sealed to a tenant's public key); "
            + ", ".join(f"{n} {t}" for t, n in report.tables.items())
            + f"; audit chain {report.audit_entries} entries",
            data["keyring"],
        ]
        if report.problems:
            lines = ["migration NOT complete:"] + [f"  {p}" for p in report.problems] + lines[1:]
        return "\n".join(lines)

    emit(args, data, text)
    return EXIT_OK if report.ok else EXIT_FAILURE


def add_parsers(top: Any, common: argparse.ArgumentParser, data_out: Any) -> None:
    vault = top.add_parser("vault", help="the vault as a whole: moving it elsewhere")
    vsub = vault.add_subparsers(dest="action", required=True, metavar="ACTION")
    mig = vsub.add_parser(
        "migrate",
        parents=[common, data_out],
        help="copy this (stopped) vault into a PostgreSQL catalog and an S3 store, and verify it",
    )
    mig.add_argument(
        "--to-catalog",
        required=True,
        metavar="URL",
        help="the target catalog, postgresql://user:password@host/db (an empty database, or "
        "this vault's migration left half-way); its password is never printed",
    )
    mig.add_argument(
        "--to-blobs",
        required=True,
        metavar="URL",
        help="the target object store, s3://bucket/prefix (endpoint and keys from AWS_* "
        "variables, docs/s3.md)",
    )
    mig.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"the source's configuration, for its tenants' key custody (env {CONFIG_ENV})",
    )
    mig.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    mig.set_defaults(func=cmd_vault_migrate)
