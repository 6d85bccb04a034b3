"""The aiohttp service. For now: the vault and ``/healthz``; the telephony adapters plug in here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ivr import __version__
from storage.catalog import RecordingStatus
from storage.vault import Vault

log = logging.getLogger(__name__)

VAULT = web.AppKey("vault", Vault)
DATA_DIR = web.AppKey("data_dir", Path)


async def _vault_ctx(app: web.Application) -> AsyncIterator[None]:
    vault = await asyncio.to_thread(Vault, app[DATA_DIR])
    app[VAULT] = vault
    log.info("vault open at %s (writer %s)", app[DATA_DIR], vault.writer_id)
    yield
    # Open recordings are finished (final chunk sealed) before the process goes.
    await asyncio.to_thread(vault.close)
    log.info("vault closed")


async def healthz(request: web.Request) -> web.Response:
    vault = request.app[VAULT]
    recording = await asyncio.to_thread(lambda: len(vault.list(status=RecordingStatus.RECORDING)))
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "open_recordings": len(vault.open_recordings),
            "recordings_in_progress": recording,
        }
    )


def create_app(data_dir: Path) -> web.Application:
    app = web.Application()
    app[DATA_DIR] = data_dir
    app.cleanup_ctx.append(_vault_ctx)
    app.router.add_get("/healthz", healthz)
    return app


def serve(*, data_dir: Path, host: str, port: int) -> None:
    # run_app turns SIGINT/SIGTERM into a graceful stop that runs the cleanup contexts.
    web.run_app(create_app(data_dir), host=host, port=port, print=None)
