"""Of the processes sharing a vault, one runs the background jobs (ivr/leadership.py): the
retention sweep, the breach watch and the key schedule, not one copy per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import aiohttp
from aiohttp.test_utils import TestServer

from ivr.config import load_config
from ivr.leadership import LOCK_FILE, Leadership
from ivr.service import LEADERSHIP, VAULT, create_app
from storage import lifecycle
from tests.test_asterisk_e2e import until


def test_one_holder_at_a_time_and_the_next_takes_over(tmp_path):
    first, second = Leadership(tmp_path), Leadership(tmp_path)
    assert first.claim() and first.claim() and first.held
    assert not second.claim() and not second.held
    assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o600
    first.release()
    assert not first.held and second.claim()
    second.release()


def test_a_killed_holder_lets_another_take_over(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from ivr.leadership import Leadership
                assert Leadership(Path({str(tmp_path)!r})).claim()
                print("held", flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"held\n"
        waiting = Leadership(tmp_path)
        assert not waiting.claim()
        child.kill()  # no chance to release anything: the kernel drops the lock
        child.wait(30)
        assert waiting.claim()
        waiting.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


async def test_two_services_on_one_vault_sweep_from_one_of_them(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    swept = []
    real_sweep = lifecycle.sweep

    def sweep(vault, **kw):
        swept.append(vault)
        return real_sweep(vault, **kw)

    monkeypatch.setattr(lifecycle, "sweep", sweep)
    apps = [create_app(load_config(None), tmp_path, fsync=False, sweep_interval=0.01) for _ in "ab"]
    servers = [TestServer(app) for app in apps]
    for server in servers:
        await server.start_server()
    try:
        await until(lambda: len(swept) >= 5, "five sweeps")
        leaders = [app for app in apps if app[LEADERSHIP].held]
        assert len(leaders) == 1
        (leader,) = leaders
        (other,) = [app for app in apps if app is not leader]
        assert {id(v) for v in swept} == {id(leader[VAULT])}
        async with aiohttp.ClientSession() as http:  # /healthz says which one runs them
            for app, server in zip(apps, servers, strict=True):
                async with http.get(server.make_url("/healthz")) as resp:
                    runs_here = (await resp.json())["background_jobs"]["runs_here"]
                assert runs_here is (app is leader)
        await servers[apps.index(leader)].close()  # the leader stops: the other takes over
        await until(lambda: other[LEADERSHIP].held, "the other service to take over")
        count = len(swept)
        await until(lambda: len(swept) > count + 2, "sweeps by the other service")
        assert {id(v) for v in swept[count:]} == {id(other[VAULT])}
    finally:
        for server in servers:
            await server.close()
