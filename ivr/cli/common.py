"""What every ``ivr`` subcommand shares: the actor name, opening the vault, printing data."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.vault import Vault

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


# Where every command that reads the configuration finds it when --config is not given.
CONFIG_ENV = "IVR_CONFIG"


class CommandFailed(Exception):
    """A command could not do what was asked; the message says why, for the operator."""


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def open_vault(args: argparse.Namespace, *, create: bool = False) -> Vault:
    return Vault(Path(args.data_dir), create=create, public_keys=_config_custody(args))


def _config_custody(args: argparse.Namespace) -> dict[str, bytes | None] | None:
    """Each tenant's key custody from ``--config``, for the commands that take one."""
    if not getattr(args, "config", None):
        return None
    from ivr.config import load_config

    config = load_config(Path(args.config))
    return {t.id: t.public_key for t in config.tenants.values()}


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(human())
