"""``ivr loadtest``: one command line for both platforms (``--platform twilio|asterisk``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any, TypeVar

from ivr.harness.loadtest.asterisk import (
    ARI_PASSWORD_ENV,
    BARE_PORT_BASE,
    DEFAULT_ARI_LISTEN,
    DEMO_ARI_PASSWORD,
    PRESS_AFTER_S,
    AsteriskLoadtestOptions,
    SetupError,
    format_asterisk_report,
    run_asterisk_loadtest,
)
from ivr.harness.loadtest.core import DEFAULT_URL
from ivr.harness.loadtest.twilio import LoadtestOptions, format_report, run_loadtest
from ivr.harness.twilio_wire import AUTH_TOKEN_ENV, DEFAULT_FROM, DEFAULT_TO

__all__ = ["add_loadtest_parser", "asterisk_options_from_args", "options_from_args"]

_O = TypeVar("_O", LoadtestOptions, AsteriskLoadtestOptions)


def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``loadtest`` to an ``add_subparsers()`` object; its ``func`` is ``run_loadtest_cli``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "loadtest",
        help="many simulated calls (Twilio or Asterisk) at once against a running service",
        description=(
            "Run N simulated Twilio calls concurrently against a running service (consent "
            "phase in fast virtual time, recording streams of both tracks in real time), "
            "measure the service's CPU per call-minute, and compare it with a bare aiohttp "
            "receive+decode+seal loop under the same load. With --platform asterisk, a fake "
            "Asterisk at --ari-listen (the service's [asterisk] url) delivers the calls and "
            "streams their RTP instead (ivr.harness.loadtest.asterisk). Exit 0 when every call "
            "completed and no frame was lost."
        ),
    )
    _add_options(p)
    p.set_defaults(func=run_loadtest_cli)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--platform",
        choices=("twilio", "asterisk"),
        default="twilio",
        help="twilio: act as Twilio against --url; asterisk: act as an Asterisk PBX that the "
        "service's [asterisk] url points at (default twilio)",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds of recording stream per call, in real time (default 20)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="spread the call starts over this many seconds (default min(10, calls/50))",
    )
    p.add_argument(
        "--to",
        default=None,
        help=f"the dialled line (default {DEFAULT_TO}; asterisk: +15550100004, which records "
        "at once)",
    )
    p.add_argument(
        "--from", dest="from_", metavar="NUMBER", default=DEFAULT_FROM, help="the caller's number"
    )
    p.add_argument(
        "--press",
        default=None,
        help="key pressed during the consent prompt ('' for none; default 1 on opt-in lines)",
    )
    p.add_argument(
        "--auth-token",
        default=None,
        help=f"Twilio auth token for signing (default ${AUTH_TOKEN_ENV}, else the demo token)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the bare reference comparison")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=3.0,
        help="seconds between progress lines on stderr (0: none; default 3)",
    )
    _add_asterisk_options(p)


def _add_asterisk_options(p: argparse.ArgumentParser) -> None:
    """The options only ``--platform asterisk`` uses."""
    g = p.add_argument_group("--platform asterisk")
    g.add_argument(
        "--ari-listen",
        default=DEFAULT_ARI_LISTEN,
        metavar="HOST:PORT",
        help=f"where the fake ARI listens: the service's [asterisk] url (default "
        f"{DEFAULT_ARI_LISTEN})",
    )
    g.add_argument("--ari-app", default="ivr", help="the Stasis app name (default ivr)")
    g.add_argument("--ari-user", default="ivr", help="ARI user name (default ivr)")
    g.add_argument(
        "--ari-password",
        default=None,
        help=f"ARI password (default ${ARI_PASSWORD_ENV}, else '{DEMO_ARI_PASSWORD}')",
    )
    g.add_argument(
        "--press-after",
        type=float,
        default=PRESS_AFTER_S,
        metavar="S",
        help=f"opt-in lines: seconds after the bridge is up to press the key "
        f"(default {PRESS_AFTER_S:g})",
    )
    g.add_argument(
        "--bare-ports",
        default=None,
        metavar="LOW-HIGH",
        help=f"UDP ports for the bare reference, one per call (default from {BARE_PORT_BASE})",
    )


def _options(cls: type[_O], args: argparse.Namespace) -> _O:
    """The options of ``cls`` that were given on the command line (the dests match the field
    names; ``--to`` left out means the platform's default line)."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and getattr(args, f.name, None) is not None
    }
    return cls(**given, reference=not args.no_reference)


def asterisk_options_from_args(args: argparse.Namespace) -> AsteriskLoadtestOptions:
    """``--platform asterisk``'s options."""
    return _options(AsteriskLoadtestOptions, args)


def options_from_args(args: argparse.Namespace) -> LoadtestOptions:
    """``--platform twilio``'s options."""
    return _options(LoadtestOptions, args)


def run_loadtest_cli(args: argparse.Namespace) -> int:
    """Exit status: 0 when every call completed and no frame was lost, 1 if not, 2 for bad
    options (or a fake Asterisk that cannot listen)."""
    try:
        if getattr(args, "platform", "twilio") == "asterisk":
            options: Any = asterisk_options_from_args(args)
            options.check()
            report = asyncio.run(run_asterisk_loadtest(options))
            text = format_asterisk_report
        else:
            options = options_from_args(args)
            options.check()
            report = asyncio.run(run_loadtest(options))
            text = format_report
    except (ValueError, SetupError) as exc:
        print(f"ivr loadtest: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else text(report))
    return 0 if report["ok"] else 1
