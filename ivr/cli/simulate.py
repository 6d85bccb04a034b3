"""``ivr simulate``: place a simulated call against a running service (the harness's Twilio or
Asterisk caller, ``ivr/harness/``); and the options it shares with ``ivr loadtest``
(``ivr.cli.loadtest``).

``run_simulate`` returns the exit status: 0 for a completed call, 1 if the call ended in an
error. Bad arguments are argparse errors (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from ivr.harness.asterisk_sim import AsteriskCallOptions, simulate_asterisk_call
from ivr.harness.twilio_sim import CallOptions, CallResult, TranscriptEntry, simulate_call
from ivr.harness.twilio_wire import (
    AUTH_TOKEN_ENV,
    DEFAULT_FROM,
    DEFAULT_TO,
    DEFAULT_URL,
    DEMO_AUTH_TOKEN,
)

_PRESS = re.compile(r"([0-9*#ABCD])@(.+)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds ≥ 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_press(text: str) -> tuple[float, str]:
    """``D@T`` → ``(T, D)``: key D (0-9, *, #, A-D) pressed at T seconds of call time."""
    match = _PRESS.fullmatch(text)
    with contextlib.suppress(argparse.ArgumentTypeError):
        if match is not None:
            return _seconds(match[2]), match[1]
    raise argparse.ArgumentTypeError(
        f"expected D@T with D one of 0-9 * # A B C D and T in seconds ≥ 0, got {text!r}"
    )


def _base_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http(s):// URL, got {text!r}")
    return text.rstrip("/")


def add_platform_options(p: argparse.ArgumentParser, to_help: str) -> argparse._ArgumentGroup:
    """What ``simulate`` and ``loadtest`` both take: the platform, the service, the call's
    numbers, the Twilio signing token and ``--json``; and the fake Asterisk's ARI settings, in
    the group returned."""
    p.add_argument(
        "--platform",
        choices=("twilio", "asterisk"),
        default="twilio",
        help="twilio: act as Twilio against --url; asterisk: act as an Asterisk PBX that the "
        "service's [asterisk] url points at (default twilio)",
    )
    p.add_argument(
        "--url", type=_base_url, default=DEFAULT_URL, help=f"the service ({DEFAULT_URL})"
    )
    p.add_argument("--to", default=None, metavar="NUMBER", help=to_help)
    p.add_argument(
        "--from",
        dest="from_",
        default=DEFAULT_FROM,
        metavar="NUMBER",
        help=f"the caller ({DEFAULT_FROM})",
    )
    p.add_argument(
        "--auth-token",
        default=None,
        metavar="TOKEN",
        help=f"Twilio auth token to sign with (default ${AUTH_TOKEN_ENV}, else the demo token)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g = p.add_argument_group("--platform asterisk")
    g.add_argument(
        "--ari-listen",
        default="127.0.0.1:8088",
        metavar="HOST:PORT",
        help="where the fake ARI listens: the service's [asterisk] url (127.0.0.1:8088)",
    )
    g.add_argument("--ari-app", default="ivr", help="the Stasis app name (ivr)")
    g.add_argument("--ari-user", default="ivr", help="ARI user name (ivr)")
    g.add_argument(
        "--ari-password", default=None, help="ARI password (default $ARI_PASSWORD, else 'demo')"
    )
    return g


def add_simulate_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="place a simulated Twilio call against a running service",
        description=(
            "Behave like Twilio's voice platform for one inbound call: signed webhooks, TwiML, "
            "Media Streams with caller audio (a tone, or --audio), key presses and a hang-up at "
            "given call times, then the status callback. Prints the call's transcript."
        ),
    )
    add_platform_options(p, f"the dialled number ({DEFAULT_TO})")
    p.add_argument(
        "--node",
        action="append",
        type=_base_url,
        default=[],
        metavar="URL",
        help="twilio: send each webhook and each stream of the call to the next of these "
        "service processes in turn, with --url as the public URL (repeatable; as a load "
        "balancer would; docs/cluster.md)",
    )
    p.add_argument(
        "--press",
        action="append",
        type=parse_press,
        default=[],
        metavar="D@T",
        help="press key D at T seconds of call time, e.g. 1@2.5 (repeatable)",
    )
    p.add_argument(
        "--hangup-at", type=_seconds, metavar="T", help="the caller hangs up at T seconds"
    )
    p.add_argument(
        "--duration",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="conversation with the agent after <Dial>, or message length at <Record> (5)",
    )
    p.add_argument(
        "--audio",
        type=Path,
        metavar="FILE",
        help="caller audio file (looped; default a 440 Hz tone at -12 dBFS)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="virtual call time: send audio as fast as the service takes it",
    )
    # Fast mode used to wait for the service to be quiet this long; it now syncs with the
    # service instead (see ivr.harness.twilio_sim). Still accepted so old scripts keep working.
    p.add_argument("--quiet-ms", type=_seconds, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-call-seconds",
        type=_positive_seconds,
        default=600.0,
        metavar="S",
        help="hang up after this much call time (600)",
    )
    p.set_defaults(func=run_simulate)


def _call_options(args: argparse.Namespace) -> dict[str, Any]:
    """What a call takes from the command line on either platform."""
    return {
        "to": args.to or DEFAULT_TO,
        "from_": args.from_,
        "presses": list(args.press),
        "hangup_at": args.hangup_at,
        "duration": args.duration,
        "fast": args.fast,
        "max_call_seconds": args.max_call_seconds,
    }


def options_from_args(args: argparse.Namespace) -> CallOptions:
    token = args.auth_token or os.environ.get(AUTH_TOKEN_ENV) or DEMO_AUTH_TOKEN
    return CallOptions(
        url=args.url,
        auth_token=token,
        audio=args.audio,
        nodes=tuple(args.node),
        **_call_options(args),
    )


def _asterisk_options(args: argparse.Namespace) -> AsteriskCallOptions:
    host, _, port = args.ari_listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ari-listen {args.ari_listen!r} is not HOST:PORT")
    return AsteriskCallOptions(
        host=host,
        port=int(port),
        app=args.ari_app,
        username=args.ari_user,
        password=args.ari_password or os.environ.get("ARI_PASSWORD") or "demo",
        **_call_options(args),
    )


def format_entry(entry: TranscriptEntry) -> str:
    return f"{f'+{entry.t:.2f}s':>9}  {entry.text}"


def summary_line(result: CallResult) -> str:
    if result.status_response is None:
        return "no outcome reported by the service"
    parts = [f"decision: {result.decision or '-'}"]
    if result.recording_id:
        status = f" ({result.recording_status})" if result.recording_status else ""
        parts.append(f"recording {result.recording_id}{status}")
    else:
        parts.append("no recording")
    parts.append(f"lawful basis {result.lawful_basis or '-'}")
    return " · ".join(parts)


async def run_simulate_async(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    def live(entry: TranscriptEntry) -> None:
        print(format_entry(entry), file=out, flush=True)

    on_transcript = None if args.json else live
    try:
        if args.platform == "asterisk":
            result = await simulate_asterisk_call(
                _asterisk_options(args), on_transcript=on_transcript
            )
        else:
            result = await simulate_call(options_from_args(args), on_transcript=on_transcript)
    except ValueError as exc:  # options the parser could not check
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False), file=out)
    else:
        print(summary_line(result), file=out)
    return 0 if result.error is None else 1


def run_simulate(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_simulate_async(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
