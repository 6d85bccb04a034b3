"""The service under test, as users run it: ``ivr serve`` in its own process, pointed at ARI.

A real process, so that SIGTERM and SIGKILL mean what they mean in production. The test reads
what the service did from the outside: ``/healthz``, and the vault (catalog rows, recordings)
opened read-only by the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.vault import CATALOG_FILE, Vault
from tests.asterisk.pbx import Asterisk, free_port, free_udp_range

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "ivr" / "demo.toml"
MASTER_KEY = "5a" * 32  # a test vault's key, never a real one

# The demo's lines (ivr/demo.toml), named for the tests.
CONSENT_LINE = "+15550100001"  # consent, opt_in, forwarded to the agent
OBJECTION_LINE = "+15550100002"  # legitimate interests, opt_out, forwarded
NOTICE_LINE = "+15550100003"  # contract, notice, forwarded
EMERGENCY_LINE = "+15550100004"  # vital interests, none, forwarded
MESSAGE_LINE = "+15550100005"  # consent, opt_in, Swedish, no agent: a message line
REPORT_LINE = "+15550100006"  # legitimate interests, opt_out, Swedish, no agent
CALLER = "+46701234567"


class Service:
    def __init__(
        self, pbx: Asterisk, root: Path, *, app: str = Asterisk.APP, data_dir: Path | None = None
    ) -> None:
        """``data_dir``: another instance's, to share its vault and catalog (as nodes share
        one catalog); by default ``root/var`` of its own."""
        self.pbx = pbx
        self.root = root
        self.data_dir = data_dir or root / "var"
        self.config = root / "ivr.toml"
        self.port = free_port()
        low, high = free_udp_range(100)
        self.config.write_text(
            "[asterisk]\n"
            f'url = "{pbx.ari_url}"\n'
            f'username = "{pbx.USER}"\n'
            'password_env = "ARI_PASSWORD"\n'
            f'app = "{app}"\n'
            'rtp_host = "127.0.0.1"\n'
            f'rtp_ports = "{low}-{high}"\n'
            'dial_template = "PJSIP/{number}@agent"\n' + DEMO.read_text()
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.root / "service.log"

    def env(self) -> dict[str, str]:
        return dict(os.environ, ARI_PASSWORD=self.pbx.password, IVR_MASTER_KEY=MASTER_KEY)

    # -- process ----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ivr",
                "-v",
                "serve",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
            ],
            env=self.env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.until(lambda: self.connected(), "the service to connect to ARI", timeout)

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, as an init system sends it; the exit code."""
        proc = self.process
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the service ignored SIGTERM for {timeout} s") from None

    def kill(self) -> None:
        proc = self.process
        assert proc is not None
        proc.kill()
        proc.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop()

    # -- looking in from outside ------------------------------------------------------------------
    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def connected(self) -> bool:
        health = self.health()
        return bool(health and health.get("asterisk", {}).get("connected"))

    def calls_in_progress(self) -> int:
        health = self.health()
        assert health is not None, self.log_tail()
        return int(health["asterisk"]["calls_in_progress"])

    def until(self, predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        """Poll a condition of the service (bounded); fail with its log if it never holds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the service exited waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.05)

    async def wait(self, predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        """``until`` for async tests: the polling runs in a thread, so the test's own RTP and
        sipp handling go on meanwhile."""
        await asyncio.to_thread(self.until, predicate, what, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def catalog(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.data_dir / CATALOG_FILE}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        return db

    def call_rows(self) -> dict[str, sqlite3.Row]:
        """Every call row, by the caller's Asterisk channel id."""
        with contextlib.closing(self.catalog()) as db:
            rows = db.execute("SELECT * FROM calls ORDER BY started_at").fetchall()
        return {r["platform_call_id"]: r for r in rows}

    def recording_rows(self) -> dict[str, sqlite3.Row]:
        """Every recording row, by call id."""
        with contextlib.closing(self.catalog()) as db:
            rows = db.execute("SELECT * FROM recordings").fetchall()
        return {r["call_id"]: r for r in rows}

    def vault(self) -> Vault:
        """The vault for reading (no recovery, nothing created): the service may be running."""
        return Vault(
            self.data_dir,
            create=False,
            recover=False,
            environ={"IVR_MASTER_KEY": MASTER_KEY},
        )

    def frames(self, recording_id: str) -> list[bytes]:
        with contextlib.closing(self.vault()) as vault, vault.open_reader(recording_id) as rd:
            return [frame.payload for frame in rd.frames()]
