"""``ivr calls withdraw``: stop a live call's recording for the caller, through the service.

A live call exists only inside the running service, so this command is a client of its admin
API (``POST /api/v1/calls/{call_id}/withdraw``, ivr.api.calls): the agent's token says who asks,
and the service audits it. The token is read from an environment variable, never an argument
(arguments show in the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from ivr.cli.common import EXIT_OK, CommandFailed, emit

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_ENV = "IVR_API_TOKEN"
TIMEOUT_SECONDS = 15.0


def _post(url: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        return exc.code, answer if isinstance(answer, dict) else {}
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise CommandFailed(f"the service at {url} cannot be reached: {exc}") from None


def cmd_withdraw(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        raise CommandFailed(
            f"set {args.token_env} to an API token of role agent, supervisor or dpo "
            "(`ivr api token` makes one)"
        )
    base = args.url.rstrip("/")
    url = f"{base}/api/v1/calls/{quote(args.call_id, safe='')}/withdraw"
    status, answer = _post(url, token, {"note": args.note} if args.note else {})
    if status != 200:
        why = answer.get("error") or f"HTTP {status}"
        raise CommandFailed(f"call {args.call_id}: not withdrawn: {why}")

    def text() -> str:
        rec = answer.get("recording_id")
        state = answer.get("recording_status")
        done = f"recording {rec} {state}" if rec else "nothing had been stored yet"
        return f"call {args.call_id}: recording stopped for the caller ({done})"

    emit(args, answer, text)
    return EXIT_OK


def add_parsers(top: Any, data_out: argparse.ArgumentParser) -> None:
    calls = top.add_parser("calls", help="live calls in the running service")
    sub = calls.add_subparsers(dest="action", required=True, metavar="ACTION")
    withdraw = sub.add_parser(
        "withdraw",
        parents=[data_out],
        help="stop a live call's recording because its caller asked the agent to",
    )
    withdraw.add_argument("call_id", help="the call's id (as in the service log and the API)")
    withdraw.add_argument(
        "--url",
        default=os.environ.get("IVR_URL", DEFAULT_URL),
        help=f"the service's base URL (default: $IVR_URL or {DEFAULT_URL})",
    )
    withdraw.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"the environment variable holding the API token (default {DEFAULT_TOKEN_ENV})",
    )
    withdraw.add_argument("--note", help="a note for the audit log (e.g. what the caller said)")
    withdraw.set_defaults(func=cmd_withdraw)
