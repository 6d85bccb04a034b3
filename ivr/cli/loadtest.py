"""``ivr loadtest``: many simulated calls at once against a running service, and what they cost
it (the load test itself is ``ivr.harness.loadtest``).

``run_loadtest_cli`` returns the exit status: 0 when every call completed and no frame was
lost, 1 if not, 2 for bad options (or a fake Asterisk that cannot listen).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from ivr.cli.simulate import add_platform_options
from ivr.harness.loadtest import DRIVERS, format_report, run_loadtest
from ivr.harness.loadtest.core import PRESS_AFTER_S, SetupError
from ivr.harness.twilio_wire import DEFAULT_TO


def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``loadtest`` to an ``add_subparsers()`` object; its ``func`` is ``run_loadtest_cli``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "loadtest",
        help="many simulated calls (Twilio or Asterisk) at once against a running service",
        description=(
            "Run N simulated Twilio calls concurrently against a running service (consent "
            "phase in fast virtual time, recording streams of both tracks in real time) and "
            "measure the service's CPU per call-minute. With --platform asterisk, a fake "
            "Asterisk at --ari-listen (the service's [asterisk] url) delivers the calls and "
            "streams their RTP instead. Exit 0 when every call completed and no frame was "
            "lost. The ratio against a bare reference server under the same load is `make "
            "bench-calls` (bench/calls.py, from the source tree)."
        ),
    )
    add_loadtest_arguments(p)
    p.set_defaults(func=run_loadtest_cli)
    return p


def add_loadtest_arguments(p: argparse.ArgumentParser) -> None:
    """The load test's options (``bench/calls.py`` takes them too)."""
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


def options_from_args(args: argparse.Namespace) -> Any:
    """The options of ``--platform``'s load test that were given on the command line (the
    dests match the field names; ``--to`` left out means the platform's default line)."""
    cls = DRIVERS[args.platform].options_type
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and getattr(args, f.name, None) is not None
    }
    return cls(**given)


def run_loadtest_cli(args: argparse.Namespace) -> int:
    """Exit status: 0 when every call completed and no frame was lost, 1 if not, 2 for bad
    options (or a fake Asterisk that cannot listen)."""
    try:
        report = asyncio.run(run_loadtest(options_from_args(args)))
    except (ValueError, SetupError) as exc:
        print(f"ivr loadtest: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0 if report["ok"] else 1
