"""``ivr vault migrate``: move a single-node vault to a PostgreSQL catalog and an object store
(storage/migrate.py, docs/migrate.md)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, EXIT_FAILURE, EXIT_OK, CommandFailed, actor, emit, open_vault
from storage.blob_url import S3Location

SHARED_KEYRING = (
    "the keyring was not copied (no --to-keyring): every node on the target must open this "
    "keyring ({keyring}) with the same master key"
)
COPIED_KEYRING = (
    "the keyring is in the {store} ({state}): the target's nodes open it with "
    "[storage] keyring_url and the same master key. {keyring} is now a second copy: destroy it "
    "(and its backups) once the target serves, or keys retired there stay in it"
)


def cmd_vault_migrate(args: argparse.Namespace) -> int:
    from storage.keys import load_master_key
    from storage.migrate import copy_keyring, migrate
    from storage.postgres import redacted
    from storage.vault import Vault

    for option, url in (("--to-catalog", args.to_catalog), ("--to-keyring", args.to_keyring)):
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise CommandFailed(f"{option} must be a postgresql:// URL")
    try:
        blobs = S3Location.parse(args.to_blobs).url
    except ValueError as exc:
        raise CommandFailed(f"--to-blobs: {exc}") from None
    quiet = args.quiet

    def progress(done: int, total: int, recording_id: str, what: str) -> None:
        if not quiet:
            print(f"migrate: {done}/{total} {recording_id} {what}", file=sys.stderr, flush=True)

    data_dir = Path(args.data_dir)
    with open_vault(args) as source, tempfile.TemporaryDirectory(prefix="ivr-migrate-") as node:
        keyring = source.keyring.store.where
        if args.to_keyring is None:
            note, where = SHARED_KEYRING.format(keyring=keyring), "the source's keyring file"
            # The target opens the source's keyring: the same data directory.
            target = Vault(
                data_dir, create=False, catalog_url=args.to_catalog, blob_url=blobs, recover=False
            )
        else:
            state = copy_keyring(source, args.to_catalog, args.to_keyring)
            where = f"key store {redacted(args.to_keyring)}"
            note = COPIED_KEYRING.format(store=where, state=state, keyring=keyring)
            # The target as one of its nodes sees it: a data directory without a keyring of its
            # own, the keyring from the key store; so what verifies here opens on every node.
            target = Vault(
                Path(node),
                master_key=load_master_key(data_dir),
                catalog_url=args.to_catalog,
                blob_url=blobs,
                keyring_url=args.to_keyring,
                recover=False,
            )
        with target:
            report = migrate(source, target, actor=actor(), progress=progress, keyring=where)
    data: dict[str, Any] = {**report.as_dict(), "keyring": note}

    def text() -> str:
        lines = [
            {
                "complete": "already migrated to",
                "new": "migrated to",
                "resumed": "migrated (resumed) to",
            }[report.state]
            + f" {report.target_catalog} and {report.target_blobs}"
            + f" in {report.seconds:.1f} s: {report.recordings} recordings ({report.copied} "
            f"copied now, {report.present} already there, {report.rows_only} without audio), "
            f"{report.verified} verified by decryption from the target, "
            f"{report.ciphertext_only} byte for byte (sealed to a tenant's public key); "
            + ", ".join(f"{n} {t}" for t, n in report.tables.items())
            + f"; audit chain {report.audit_entries} entries",
            data["keyring"],
        ]
        if report.problems:
            lines = ["migration NOT complete:"] + [f"  {p}" for p in report.problems] + lines
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
        "--to-keyring",
        metavar="URL",
        help="a key store, postgresql://... (its own database, docs/key-custody.md): the keyring "
        "is copied into it for the target's nodes; without it they must share this data "
        "directory's keyring.json",
    )
    mig.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"the source's configuration, for its tenants' key custody (env {CONFIG_ENV})",
    )
    mig.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    mig.set_defaults(func=cmd_vault_migrate)
