"""``ivr keys retire``: destroy a tenant's old key versions once nothing live needs them.

What it is for (docs/key-custody.md, "Retiring old versions"): a backup of the catalog taken
before an erasure still holds the erased recording's wrapped data key; once the version that
wrapped it is retired, that backup no longer opens it with the live keyring.
"""

from __future__ import annotations

import argparse
from typing import Any

from ivr.cli.common import EXIT_OK, actor, emit, open_vault


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from storage.retirement import retire

    with open_vault(args) as vault:
        report = retire(vault, args.tenant, args.before, actor=actor())

    def text() -> str:
        if not report.retired:
            return (
                f"tenant {report.tenant}: no key version before {report.before} is left; "
                f"versions kept: {', '.join(map(str, report.kept))}"
            )
        gone = ", ".join(f"{k.version} ({k.fingerprint})" for k in report.retired)
        return (
            f"tenant {report.tenant}: destroyed key version(s) {gone}; versions kept: "
            f"{', '.join(map(str, report.kept))}. Copies of the catalog that hold data keys "
            "wrapped under them no longer open with this keyring; destroy keyring backups that "
            "still hold them (docs/key-custody.md)"
        )

    emit(args, report.as_dict(), text)
    return EXIT_OK


def add_retire_parser(ksub: Any, common: argparse.ArgumentParser, data_out: Any) -> None:
    ret = ksub.add_parser(
        "retire",
        parents=[common, data_out],
        help="destroy key versions older than --before (once nothing live uses them)",
    )
    ret.add_argument("--tenant", required=True)
    ret.add_argument(
        "--before",
        type=int,
        required=True,
        metavar="VERSION",
        help="destroy versions older than this one; refused while a live data key or caller "
        "number is still wrapped under one of them",
    )
    ret.set_defaults(func=cmd_keys_retire)
