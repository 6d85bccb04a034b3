"""``ivr breach``: open, follow, report and close personal data breaches (Art. 33, 34)."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ivr.cli.common import CONFIG_ENV, EXIT_OK, CommandFailed, actor, emit, open_vault
from ivr.gdpr import breach
from storage.files import atomic_write, parse_utc


def _time(text: str) -> datetime:
    try:
        return parse_utc(text if "T" in text else text + "T00:00:00Z")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time like 2026-11-28T09:30:00Z"
        ) from None


def _config(args: argparse.Namespace) -> Any:
    from ivr.config import load_config

    return load_config(Path(args.config) if args.config else None)


def _left(b: dict[str, Any], now: datetime) -> str:
    if b["status"] == "closed":
        return f"closed {b['closed_at']}"
    hours = breach.time_left(b, now).total_seconds() / 3600
    state = breach.urgency(b, now)
    return f"{state}: {abs(hours):.1f} h {'left' if hours > 0 else 'past the deadline'}"


def cmd_open(args: argparse.Namespace) -> int:
    try:
        scope = breach.parse_scope(args.scope, keys_safe=args.keys_safe)
    except breach.BreachError as exc:
        raise CommandFailed(str(exc)) from None
    config = _config(args)
    with open_vault(args) as vault:
        try:
            b = breach.open_breach(
                vault,
                config,
                detected_at=args.detected_at,
                description=args.description,
                scope=scope,
                actor=actor(),
                measures=args.measure,
            )
        except breach.BreachError as exc:
            raise CommandFailed(str(exc)) from None
    now = datetime.now(UTC)

    def text() -> str:
        lines = [
            f"breach {b['id']} opened: {b['scope']['description']}",
            f"  notify the supervisory authority by {b['deadline']} ({_left(b, now)})",
        ]
        if b["assessment"]["nobody_affected"]:
            lines.append(
                f"  nobody's data is known to be affected: {b['assessment']['nobody_affected']}"
            )
        lines.append(f"  measures taken: {len(b['measures'])} entered")
        for tenant, c in b["assessment"]["controllers"].items():
            told = "callers need not be told" if c["art34_3a_applies"] else "CALLERS MUST BE TOLD"
            lines.append(
                f"  {c['name']} ({tenant}): {c['records']} recording(s), about {c['subjects']} "
                f"caller(s); {told} ({c['art34_reason']})"
            )
        return "\n".join(lines)

    emit(args, b, text)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_vault(args) as vault:
        items = breach.all_breaches(vault)
    data = [
        {
            "id": b["id"],
            "status": b["status"],
            "urgency": breach.urgency(b, now),
            "deadline": b["deadline"],
            "hours_left": round(breach.time_left(b, now).total_seconds() / 3600, 1),
            "scope": b["scope"]["description"],
        }
        for b in items
    ]

    def text() -> str:
        if not items:
            return "no breaches registered"
        return "\n".join(
            f"{b['id']}  {_left(b, now):<34}  {b['scope']['description']}" for b in items
        )

    emit(args, data, text)
    return EXIT_OK


def _get(vault: Any, breach_id: str) -> dict[str, Any]:
    try:
        return breach.get(vault, breach_id)
    except breach.BreachError as exc:
        raise CommandFailed(str(exc)) from None


def cmd_show(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_vault(args) as vault:
        b = _get(vault, args.id)
    b["time_left"] = _left(b, now)
    emit(args, b, lambda: "\n".join(f"{k:<12} {v}" for k, v in b.items()))
    return EXIT_OK


def cmd_measure(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        _get(vault, args.id)
        try:
            b = breach.add_measures(vault, args.id, args.text, actor=actor())
        except breach.BreachError as exc:
            raise CommandFailed(str(exc)) from None

    def text() -> str:
        lines = [f"breach {b['id']}: {len(b['measures'])} measure(s) taken on record"]
        lines += [f"  {m['at']}  {m['actor']}: {m['text']}" for m in b["measures"]]
        return "\n".join(lines)

    emit(args, b["measures"], text)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    import json

    fmt = "json" if args.json else args.format
    with open_vault(args) as vault:
        b = _get(vault, args.id)
        vault.audit(actor=actor(), action="breach.reported", target=b["id"], detail={"format": fmt})
    rep = breach.report(b, datetime.now(UTC))
    text = (
        json.dumps(rep, indent=2, ensure_ascii=False)
        if fmt == "json"
        else breach.render_markdown(rep)
    )
    if args.output:
        atomic_write(Path(args.output), text.encode(), mode=0o600)
        print(f"wrote {args.output}")
    else:
        print(text)
    return EXIT_OK


def cmd_subjects(args: argparse.Namespace) -> int:
    private_key = None
    if args.private_key:
        from storage.custody import load_private_key

        private_key = load_private_key(Path(args.private_key))
    with open_vault(args) as vault:
        _get(vault, args.id)
        numbers = breach.subjects_to_notify(
            vault, args.id, actor=actor(), reason=args.reason, private_key=private_key
        )

    def text() -> str:
        lines = ["tenant,phone"]
        lines += [f"{tenant},{n}" for tenant, ns in numbers.items() for n in ns]
        return "\n".join(lines)

    emit(args, numbers, text)
    return EXIT_OK


def cmd_close(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        _get(vault, args.id)
        try:
            b = breach.close(vault, args.id, summary=args.summary, actor=actor())
        except breach.BreachError as exc:
            raise CommandFailed(str(exc)) from None
    emit(args, b, lambda: f"breach {b['id']} closed at {b['closed_at']}")
    return EXIT_OK


def add_parsers(top: Any, common: argparse.ArgumentParser, data_out: Any) -> None:
    config_opts = argparse.ArgumentParser(add_help=False)
    config_opts.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help="configuration (controller names, DPO contacts; default the demo)",
    )
    b = top.add_parser("breach", help="the 72-hour personal data breach workflow")
    bs = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    op = bs.add_parser(
        "open", parents=[common, data_out, config_opts], help="register a breach and assess it"
    )
    op.add_argument("--detected-at", type=_time, required=True, help="when you became aware (UTC)")
    op.add_argument("--description", required=True, help="what happened")
    op.add_argument(
        "--scope",
        required=True,
        help="storage | key:TENANT:VERSION | tenant:TENANT | window:FROM/TO | recordings:ID,ID",
    )
    op.add_argument(
        "--keys-safe", action="store_true", help="no key was exposed, only encrypted data"
    )
    op.add_argument(
        "--measure",
        action="append",
        default=[],
        metavar="TEXT",
        help="a measure already taken, in your words (repeatable; add more later with "
        "`ivr breach measure`)",
    )
    op.set_defaults(func=cmd_open)
    ls = bs.add_parser("list", parents=[common, data_out], help="breaches and time left")
    ls.set_defaults(func=cmd_list)
    sh = bs.add_parser("show", parents=[common, data_out], help="one breach")
    sh.add_argument("id")
    sh.set_defaults(func=cmd_show)
    me = bs.add_parser(
        "measure", parents=[common, data_out], help="record measures taken (stored, audited)"
    )
    me.add_argument("id")
    me.add_argument("text", nargs="+", help="each a measure taken, in your words")
    me.set_defaults(func=cmd_measure)
    rp = bs.add_parser("report", parents=[common], help="the Art. 33(3) notification content")
    rp.add_argument("id")
    rp.add_argument("--format", choices=("md", "json"), default="md")
    rp.add_argument("--json", action="store_true", help="same as --format json")
    rp.add_argument("-o", "--output", help="write to this file")
    rp.set_defaults(func=cmd_report)
    su = bs.add_parser(
        "subjects", parents=[common, data_out], help="numbers of callers to tell (audited)"
    )
    su.add_argument("id")
    su.add_argument("--reason", default="notifying data subjects (Art. 34)")
    su.add_argument("--private-key", help="for controllers that keep their own key")
    su.set_defaults(func=cmd_subjects)
    cl = bs.add_parser("close", parents=[common, data_out], help="close a breach")
    cl.add_argument("id")
    cl.add_argument("--summary", required=True, help="what was done")
    cl.set_defaults(func=cmd_close)
