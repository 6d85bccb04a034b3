"""``ivr serve``: health endpoint and a graceful stop on SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ivr import serving
from ivr.cli import main
from ivr.config import load_config
from ivr.service import VAULT, create_app
from storage.catalog import RecordingStatus

ROOT = Path(__file__).resolve().parent.parent


async def test_healthz_reports_the_vault(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    app = create_app(load_config(None), tmp_path)
    async with TestClient(TestServer(app)) as client:
        rec = await app[VAULT].astart_recording(tenant="acme", lawful_basis="consent", purpose="q")
        resp = await client.get("/healthz")
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ok" and body["calls_in_progress"] == 0
        assert body["open_recordings"] == 1 and body["recordings_in_progress"] == 1
        assert body["cpu_seconds"] > 0
        rec.append(0, 0, b"\xff" * 160)
    # Shutting the app down finished the open recording rather than leaving it to recovery.
    from storage.vault import Vault

    with Vault(tmp_path, create=False) as vault:
        assert vault.get(rec.id).status is RecordingStatus.COMPLETE
        (loaded,) = [e for e in vault.catalog.audit_events() if e.action == "config.loaded"]
        assert loaded.actor == "system" and loaded.detail["reason"] == "service start"
        assert loaded.detail["demo"] is True and len(loaded.detail["sha256"]) == 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_runs_a_simulated_call_and_stops_gracefully_on_sigterm(tmp_path, capsys, loop):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("IVR_MASTER_KEY", "TWILIO_AUTH_TOKEN")}
    args = ["serve", "--port", str(port), "--data-dir", str(tmp_path), "--loop", loop]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivr", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    assert json.loads(r.read())["event_loop"] == loop
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "service did not come up"
                time.sleep(0.05)
        # A whole call through the command-line harness, against the real process.
        code = main(
            ["simulate", "--url", f"http://127.0.0.1:{port}", "--fast", "--press", "1@2", "--json"]
        )
        result = json.loads(capsys.readouterr().out)
        assert code == 0 and result["decision"] == "accepted"
        assert result["recording_id"].startswith("rec_") and result["lawful_basis"] == "consent"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stderr.read()
    assert "generated a master key" in log and "vault closed" in log
    assert "recording rec_" in log and "46701234567" not in log  # ids, never numbers
    assert (tmp_path / "master.key").exists()
    assert f"(event loop: {loop}; hot path: " in log


def test_the_event_loop_is_uvloop_where_installed_and_asyncio_on_request(monkeypatch):
    assert serving.loop_factory("auto")[0] == "uvloop"  # make test installs it
    assert serving.loop_factory("asyncio") == ("asyncio", None)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert serving.loop_factory("auto") == ("asyncio", None)
    with pytest.raises(ValueError, match="not installed"):
        serving.loop_factory("uvloop")
    with pytest.raises(ValueError, match="expected one of"):
        serving.loop_factory("trio")
    assert main(["serve", "--loop", "uvloop", "--port", "0"]) == 2  # refused before it starts


ARENA_PROBE = """
import ctypes, sys, threading
from ivr import serving
if sys.argv[1] == "capped":
    assert serving.limit_malloc_arenas()
barrier = threading.Barrier(4)
def allocate():
    barrier.wait()  # all four alive at once, so that none can take over another's arena
    kept = [bytes(2000) for _ in range(100)]  # above pymalloc's 512 bytes: glibc's malloc
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


@pytest.mark.parametrize(
    "mode, operator, arenas",
    [
        ("capped", None, serving.MALLOC_ARENAS),
        ("as glibc likes", None, 5),  # one per thread that allocates, and the main one
        ("capped", "4", 4),  # an operator's MALLOC_ARENA_MAX stands
    ],
)
def test_threads_share_at_most_two_malloc_arenas(mode, operator, arenas):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if operator is not None:
        env["MALLOC_ARENA_MAX"] = operator
    run = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert sum(line.startswith("Arena ") for line in run.stderr.splitlines()) == arenas, run.stderr


def test_the_arenas_are_capped_before_the_service_starts(monkeypatch, tmp_path):
    import gc

    from ivr import collector_pauses
    from ivr.config.load import DEMO_CONFIG
    from ivr.service import serve

    calls: list[str] = []
    monkeypatch.setattr(serving, "limit_malloc_arenas", lambda: calls.append("arenas"))
    monkeypatch.setattr(serving, "run", lambda *args, **kwargs: calls.append("run"))
    monkeypatch.setattr(gc, "set_threshold", lambda *args: None)  # the test process's own stay
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(collector_pauses, "watch", lambda: calls.append("pauses"))
    serve(config=load_config(DEMO_CONFIG), data_dir=tmp_path / "var", host="127.0.0.1", port=0)
    assert calls == ["pauses", "arenas", "run"]  # its collections timed from the start


def test_json_log_lines_are_one_object_each():
    import logging as _logging

    from ivr.service import JsonLogFormatter

    record = _logging.LogRecord(
        "ivr.calls", _logging.INFO, __file__, 1, "call %s: ok", ("call_1",), None
    )
    line = JsonLogFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "call call_1: ok" and entry["level"] == "info"
    assert entry["logger"] == "ivr.calls" and "\n" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys as _sys

        record.exc_info = _sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonLogFormatter().format(record))["error"]
