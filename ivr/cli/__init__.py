"""``ivr``, the command line: one module per command group.

``main`` builds the parser from the groups (recordings and keys here; ``lifecycle``: retention,
holds, erasure, subject access, audit, API tokens; ``breach``; ``ropa``; the harness's
``simulate`` and ``loadtest``) and runs the chosen command; ``common`` holds what every group
shares (opening the vault, the actor recorded in the audit log, ``--json`` output).
"""

from ivr.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
