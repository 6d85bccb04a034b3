"""``ivr loadtest``: one command line for both platforms (``--platform twilio|asterisk``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any, TypeVar

from ivr.harness.cli import add_platform_options
from ivr.harness.loadtest.asterisk import (
    BARE_PORT_BASE,
    PRESS_AFTER_S,
    AsteriskLoadtestOptions,
    SetupError,
    format_asterisk_report,
    run_asterisk_loadtest,
)
from ivr.harness.loadtest.twilio import LoadtestOptions, format_report, run_loadtest
from ivr.harness.twilio_wire import DEFAULT_TO

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
    g = add_platform_options(
        p, f"the dialled line (default {DEFAULT_TO}; asterisk: +15550100004, which records at once)"
    )
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
        "--press",
        default=None,
        help="key pressed during the consent prompt ('' for none; default 1 on opt-in lines)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the bare reference comparison")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=3.0,
        help="seconds between progress lines on stderr (0: none; default 3)",
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
    p.set_defaults(func=run_loadtest_cli)
    return p


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
    return _options(AsteriskLoadtestOptions, args)


def options_from_args(args: argparse.Namespace) -> LoadtestOptions:
    return _options(LoadtestOptions, args)


def run_loadtest_cli(args: argparse.Namespace) -> int:
    """Exit status: 0 when every call completed and no frame was lost, 1 if not, 2 for bad
    options (or a fake Asterisk that cannot listen)."""
    try:
        if args.platform == "asterisk":
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
