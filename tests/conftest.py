"""What every test shares: one prompt cache for the whole run, kept between runs.

The service synthesises its prompts (espeak-ng) into a cache at start; a test suite that starts
the service a hundred times must not synthesise them a hundred times. ``IVR_PROMPT_CACHE`` is
set once, before any test, so the services the tests create in this process and the ``ivr``
processes they start use the same cache. It lives under ``~/.cache`` so that a second run
starts warm: the cache holds prompt words and their audio, nothing personal, and it checks what
it reads (a damaged file is made again). Tests of the cache itself use their own directories.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr.access_log import AccessLog
from ivr.config import Config, load_config
from ivr.prompt_library import CACHE_ENV
from ivr.service import create_app


def _test_prompt_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    wanted = base / "ivr-consent" / "test-prompt-cache"
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=wanted)  # noqa: SIM115 - a writability probe
        probe.close()
    except OSError:  # no writable home: a cache for this run only
        return Path(tempfile.mkdtemp(prefix="ivr-test-prompt-cache-"))
    return wanted


PROMPT_CACHE = _test_prompt_cache()
os.environ[CACHE_ENV] = str(PROMPT_CACHE)


async def _as_ivr_serve_serves(self: TestServer, **kwargs: Any) -> web.AppRunner:
    """aiohttp's TestServer cancels a handler whose client has gone; ``ivr serve`` does not
    (aiohttp's default, ivr/serving.py), and what a handler does after its client left (write
    to a closed socket, finish a recording, audit) is part of what the tests check. Twice a
    test on TestServer passed where the service logged a traceback."""
    kwargs["handler_cancellation"] = False
    kwargs.setdefault("access_log_class", AccessLog)
    return web.AppRunner(self.app, **kwargs)


TestServer._make_runner = _as_ivr_serve_serves  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def prompt_cache() -> Path:
    """The shared prompt cache (also in the environment as ``IVR_PROMPT_CACHE``)."""
    return PROMPT_CACHE


@contextlib.asynccontextmanager
async def demo_service(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, config: Config | None = None
) -> AsyncIterator[tuple[web.Application, str, TestServer]]:
    """The service on ``config`` (the embedded demo by default) with a fixed master key and the
    demo's Twilio token, served on a free port: the app, its base URL and the server."""
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    app = create_app(config or load_config(None), data_dir, fsync=False)
    server = TestServer(app)
    await server.start_server()
    try:
        yield app, str(server.make_url("")).rstrip("/"), server
    finally:
        await server.close()


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The demo service: (app, base URL). Test files with a service of their own override it."""
    async with demo_service(tmp_path / "var", monkeypatch) as (app, url, _):
        yield app, url
