"""A really full disk (issue 12.4): ``ivr serve`` with its data directory on a small tmpfs.

Runs only as root (mounting needs it); tests/test_disk_full.py covers the same ground with a
fault-injecting disk everywhere. Calls on every line while the disk is full all get their
answers, the emergency line's included; once there is room again no call stays open and no
recording stays ``recording``; the process's memory stays flat; SIGTERM with recordings running
on a full disk exits 0, and the next start recovers what they left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ivr.config import load_config
from ivr.harness.twilio_sim import CallOptions, simulate_call
from storage.catalog import RecordingStatus
from storage.vault import Vault

ROOT = Path(__file__).resolve().parent.parent
MASTER_KEY = "42" * 32
EMERGENCY_LINE = "+15550100004"
MESSAGE_LINE = "+15550100005"

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux"
)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / "filler"
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block[:size])
    finally:
        os.close(fd)
    probe = disk / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
        probe.unlink()
    return filler


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[str]:
    """``ivr serve``, its log to ``log`` (a file: a pipe nobody reads would stop the service
    once it filled)."""
    env = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
    env["IVR_MASTER_KEY"] = MASTER_KEY
    command = ["-m", "ivr", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=env,
            stderr=err,
            text=True,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except urllib.error.HTTPError:  # any answer: it serves
            return proc
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "service did not come up"
            time.sleep(0.05)


def catalog(data_dir: Path) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    db = sqlite3.connect(f"file:{data_dir / 'catalog.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return (
            db.execute("SELECT * FROM calls").fetchall(),
            db.execute("SELECT * FROM recordings").fetchall(),
        )
    finally:
        db.close()


async def one_call(url: str, to: str, **kw):
    line = load_config(None).lines[to]
    presses = [(2.0, "1")] if line.consent_mode.value == "opt_in" else []
    kw.setdefault("presses", presses)
    return await simulate_call(CallOptions(url=url, to=to, **kw))


async def test_ivr_serve_on_a_full_tmpfs(small_disk, tmp_path):
    data_dir = small_disk / "vault"
    log_file = tmp_path / "serve.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    numbers = list(load_config(None).lines)
    proc = serve(data_dir, port, log_file)
    try:
        # Room on the disk: one call per line (the tenant keys are made, the code is warm).
        for number in numbers:
            result = await one_call(url, number, fast=True, duration=1.0)
            assert result.error is None, result.transcript
        filler = fill(small_disk)
        before = rss_kib(proc.pid)

        # The disk is full: 20 calls over every line, five at a time.
        results = []
        for batch in range(4):
            results += await asyncio.gather(
                *(
                    one_call(url, numbers[(batch * 5 + i) % len(numbers)], fast=True, duration=2.0)
                    for i in range(5)
                )
            )
        after = rss_kib(proc.pid)
        for result in results:
            assert result.error is None, [e.text for e in result.transcript]
            assert result.status_response is not None and result.decision is not None
            if result.recording_status is not None:
                assert result.recording_status in ("failed", "incomplete"), result.to_json()
        emergency = [r for r in results if r.lawful_basis == "vital_interests"]
        assert emergency and all(r.decision == "not_asked" for r in emergency)
        assert all(any("Dial" in t for t in r.twiml) for r in emergency)
        assert after <= before * 1.2, (before, after)

        # Room again: within a retry period every row is written.
        filler.unlink()
        deadline = time.monotonic() + 15
        while True:
            calls, recordings = catalog(data_dir)
            sids = {c["platform_call_id"] for c in calls if c["ended_at"]}
            stuck = [r["id"] for r in recordings if r["status"] == "recording"]
            if {r.call_sid for r in results} <= sids and not stuck:
                break
            assert time.monotonic() < deadline, (len(sids), stuck)
            await asyncio.sleep(0.2)
        failed = [r for r in recordings if r["status"] == "failed"]
        assert failed and all(r["status_reason"] for r in failed)

        # Recordings running when the disk fills, then SIGTERM: exit 0.
        running = [
            asyncio.ensure_future(one_call(url, EMERGENCY_LINE, duration=600.0, http_timeout=5))
            for _ in range(3)
        ]
        await asyncio.sleep(3.0)  # real time: the recording streams are sending
        filler = fill(small_disk)
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        log = log_file.read_text()
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert "vault closed" in log

        # A restart on the still-full disk: the service comes up, says it is degraded, and
        # takes calls; the emergency line's exactly as usual. SIGTERM exits 0.
        restart_log = tmp_path / "restart.log"
        proc = serve(data_dir, port, restart_log)
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
            health = json.load(answer)
        assert health["status"] == "degraded" and health["disk"]["ok"] is False, health
        emergency = await one_call(url, EMERGENCY_LINE, fast=True, duration=1.0)
        assert emergency.error is None, [e.text for e in emergency.transcript]
        assert emergency.decision == "not_asked" and any("Dial" in t for t in emergency.twiml)
        message = await one_call(url, MESSAGE_LINE, fast=True, duration=1.0)
        assert message.error is None and message.decision is not None, message.to_json()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        log = restart_log.read_text()
        assert code == 0, log[-3000:]
        assert "vault closed" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Room again: the next start leaves nothing `recording`, and the vault's files are private.
    filler.unlink()
    with Vault(data_dir, create=False, master_key=bytes.fromhex(MASTER_KEY), fsync=False) as v:
        assert v.catalog.recordings(status=RecordingStatus.RECORDING) == []
        locks, blobs = data_dir / "locks", data_dir / "blobs"
        assert locks.stat().st_mode & 0o777 == 0o700 and blobs.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in locks.iterdir())
        assert all(
            p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600) for p in blobs.rglob("*")
        )
