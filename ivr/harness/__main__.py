"""``python -m ivr.harness simulate …``: ``ivr simulate`` alone, without the other commands."""

import argparse
import sys

from ivr.cli.simulate import add_simulate_parser

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ivr.harness")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args()
    sys.exit(args.func(args))
