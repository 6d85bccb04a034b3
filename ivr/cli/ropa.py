"""``ivr ropa``: the Art. 30 records and the measures annex, written from the configuration."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, CommandFailed
from ivr.config import DEMO_CONFIG, load_config
from ivr.gdpr.ropa import (
    DEFAULT_PROCESSOR_CONTACT,
    DEFAULT_PROCESSOR_NAME,
    ProcessorInfo,
    build_ropa,
    file_sha256,
    render_markdown,
)
from storage.files import atomic_write


def add_parser(top: Any, common: argparse.ArgumentParser) -> None:
    """``ivr ropa``: registered next to ``ivr config``."""
    p = top.add_parser(
        "ropa",
        parents=[common],
        help="the GDPR Art. 30 records and measures annex, from the configuration",
    )
    p.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file (env {CONFIG_ENV}; default: the embedded demo)",
    )
    p.add_argument("--tenant", help="only this controller's Art. 30(1) record")
    p.add_argument("--format", choices=("md", "json"), default="md", help="md (default) or json")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (atomically), not stdout")
    p.add_argument(
        "--processor-name",
        default=DEFAULT_PROCESSOR_NAME,
        help="the processor (the contact centre operating this service)",
    )
    p.add_argument(
        "--processor-contact",
        default=DEFAULT_PROCESSOR_CONTACT,
        help="the processor's contact details",
    )
    p.set_defaults(func=cmd_ropa)


def cmd_ropa(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else None
    try:  # the hash must describe the very file the records are made from
        before = file_sha256(path if path is not None else DEMO_CONFIG)
    except OSError:
        before = None  # load_config reports it
    config = load_config(path)
    ropa = build_ropa(
        config,
        tenant=args.tenant,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        now=datetime.now(UTC),
        processor=ProcessorInfo(args.processor_name, args.processor_contact),
    )
    if ropa["config"]["sha256"] != before:
        raise CommandFailed(f"{config.source} changed while the records were made; run again")
    if args.format == "json":
        text = json.dumps(ropa, indent=2, ensure_ascii=False) + "\n"
    else:
        text = render_markdown(ropa)
    if not args.output:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if out.is_dir():
        raise CommandFailed(f"{out} is a directory; give a file name")
    atomic_write(out, text.encode("utf-8"))
    for warning in ropa["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"wrote {out}: Art. 30 records of {len(ropa['controllers'])} controller(s) and the "
        "processor, with the measures annex",
        file=sys.stderr,
    )
    return 0
