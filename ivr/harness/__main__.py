"""``python -m ivr.harness simulate …``: the simulator on its own, without the service's CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ivr.harness.cli import add_simulate_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.harness")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_simulate_parser(sub)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
