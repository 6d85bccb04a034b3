"""The service's shared resources, each stored once in the aiohttp application under its key.

Every part of the service (webhooks, streams, the admin API, health) reads the same vault and
clock from here; resources one part owns (the Twilio side, the ARI application) keep their key
in that part's module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from ivr.calls import CallRegistry
from ivr.config import Config
from ivr.workers import Worker
from storage.vault import Vault

CONFIG = web.AppKey("config", Config)
DATA_DIR = web.AppKey("data_dir", Path)
CLOCK = web.AppKey[Callable[[], datetime]]("clock")
VAULT = web.AppKey("vault", Vault)
CALLS = web.AppKey("calls", CallRegistry)
# Which of the worker processes this is (``ivr serve --workers N``, ivr/workers.py).
WORKER = web.AppKey("worker", Worker)
