"""Fixtures for the tests against a real Asterisk (``make test-asterisk``).

Each test gets its own Asterisk (it boots in well under a second once built) and its own
service process, so that a test that restarts or kills one cannot disturb another. The build
itself is shared: ``tests/asterisk/build.sh`` makes it once per source tarball and caches it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.asterisk.pbx import Asterisk, build
from tests.asterisk.service import Service
from tests.asterisk.sip import SipAgent, SipCaller, new_workdir


@pytest.fixture(scope="session")
def asterisk_prefix() -> Path:
    return build()


@pytest.fixture
def pbx(asterisk_prefix: Path) -> Iterator[Asterisk]:
    server = Asterisk(asterisk_prefix)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def service(pbx: Asterisk, tmp_path: Path) -> Iterator[Service]:
    svc = Service(pbx, tmp_path)
    svc.start()
    try:
        yield svc
    finally:
        svc.close()
        if os.environ.get("IVR_SHOW_SERVICE_LOG"):
            print(svc.log_text())


class Phones:
    """Places calls and keeps every party, so each is closed whatever the test does."""

    def __init__(self, pbx: Asterisk, root: Path) -> None:
        self.pbx = pbx
        self.root = root
        self.parties: list[SipCaller | SipAgent] = []

    async def dial(self, number: str, caller: str, name: str = "caller") -> SipCaller:
        party = SipCaller(name, new_workdir(self.root, name), number=number, caller=caller)
        self.parties.append(party)
        await party.dial(self.pbx.ports.sip)
        return party

    async def agents(self, *, calls: int | None = None, name: str = "agent") -> SipAgent:
        """The agent side on Asterisk's ``agent`` endpoint: a pool (``calls=None``) that
        answers every forwarded call, or one agent with its own audio (``calls=1``)."""
        party = SipAgent(name, new_workdir(self.root, name), calls=calls)
        self.parties.append(party)
        await party.listen(self.pbx.ports.agent_sip)
        return party

    async def close(self) -> None:
        for party in self.parties:
            with contextlib.suppress(Exception):
                await party.close()


@pytest.fixture
async def phones(pbx: Asterisk, tmp_path: Path) -> AsyncIterator[Phones]:
    root = tmp_path / "sip"
    root.mkdir()
    book = Phones(pbx, root)
    try:
        yield book
    finally:
        await book.close()
