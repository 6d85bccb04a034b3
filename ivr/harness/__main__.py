"""``python -m ivr.harness simulate …``: the simulator on its own, without the service's CLI."""

import argparse
import sys

from ivr.harness.cli import add_simulate_parser

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ivr.harness")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args()
    sys.exit(args.func(args))
