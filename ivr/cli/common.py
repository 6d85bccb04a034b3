"""What every ``ivr`` subcommand shares: the actor name, opening the vault, printing data."""

from __future__ import annotations

import argparse
import getpass
import json
import os
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
    """The vault of ``--data-dir``, with the key custody, the catalog and the blob store of
    ``--config``."""
    return Vault(Path(args.data_dir), create=create, **_from_config(args))


def _from_config(args: argparse.Namespace) -> dict[str, Any]:
    """The vault's arguments from ``--config``, or for commands without that option from
    ``IVR_CONFIG`` as the service reads it (each tenant's key custody, where the catalog, the
    keyring and the blobs are: a node's commands must reach its PostgreSQL catalog and key
    store); none without either."""
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV)
    if not path:
        return {}
    from ivr.config import load_config

    config = load_config(Path(path))
    return {
        "public_keys": {t.id: t.public_key for t in config.tenants.values()},
        "catalog_url": config.catalog_url,
        "blob_url": config.blob_url,
        "keyring_url": config.keyring_url,
    }


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(human())
