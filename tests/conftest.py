"""What every test shares: one prompt cache for the whole run, kept between runs.

The service synthesises its prompts (espeak-ng) into a cache at start; a test suite that starts
the service a hundred times must not synthesise them a hundred times. ``IVR_PROMPT_CACHE`` is
set once, before any test, so the services the tests create in this process and the ``ivr``
processes they start use the same cache. It lives under ``~/.cache`` so that a second run
starts warm: the cache holds prompt words and their audio, nothing personal, and it checks what
it reads (a damaged file is made again). Tests of the cache itself use their own directories.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ivr.prompt_library import CACHE_ENV


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


@pytest.fixture(scope="session")
def prompt_cache() -> Path:
    """The shared prompt cache (also in the environment as ``IVR_PROMPT_CACHE``)."""
    return PROMPT_CACHE
