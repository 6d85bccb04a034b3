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
    """The vault of ``--data-dir``, with the key custody, the catalog and the blob store of
    ``--config``."""
    custody, catalog_url, blob_url = _from_config(args)
    return Vault(
        Path(args.data_dir),
        create=create,
        public_keys=custody,
        catalog_url=catalog_url,
        blob_url=blob_url,
    )


def _from_config(
    args: argparse.Namespace,
) -> tuple[dict[str, bytes | None] | None, str | None, str | None]:
    """Each tenant's key custody, the catalog URL and the blob URL from ``--config``, for the
    commands that take one."""
    if not getattr(args, "config", None):
        return None, None, None
    from ivr.config import load_config

    config = load_config(Path(args.config))
    custody = {t.id: t.public_key for t in config.tenants.values()}
    return custody, config.catalog_url, config.blob_url


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(human())
