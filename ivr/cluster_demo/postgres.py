"""A throwaway PostgreSQL server: initdb + pg_ctl in a temporary directory, listening on a free
loopback port and on a socket in that directory, run as an unprivileged user (initdb refuses
root: under root, as Debian's ``postgres`` user, or ``nobody``).

Used by the cluster tests (one server per test session; it starts in about a second; each test
gets fresh databases, ``database()``) and by ``ivr cluster demo`` (ivr/cluster_demo/demo.py).
Without a password the server trusts loopback connections: the tests' server holds nothing but
test data and lives only as long as the session. Given one (the demo), every connection must
present it (SCRAM-SHA-256); it is never part of a URL, libpq takes it from ``PGPASSWORD``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

SUPERUSER = "ivr_test"


def _binaries() -> Path:
    """Where initdb and pg_ctl are: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not versions:
        raise RuntimeError(
            "PostgreSQL's initdb/pg_ctl are not installed: apt-get install postgresql "
            "(make test-cluster does it when run as root)"
        )
    return Path(versions[-1]).parent


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and there is no postgres or nobody user to run as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """A running server; ``stop()`` ends it and removes its files. ``durable=False`` (the
    tests) turns fsync off: fast, and a crash of the machine loses the data."""

    def __init__(
        self, *, password: str | None = None, durable: bool = False, superuser: str = SUPERUSER
    ) -> None:
        self.bin = _binaries()
        self.password = password
        self.superuser = superuser
        self.user = _run_as()
        # Not under pytest's tmp_path: under root that is a 0700 directory the server's user
        # cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.durable = durable
        self._names = 0
        self._mutex = threading.Lock()
        try:
            self._start(password)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _start(self, password: str | None) -> None:
        owner = pwd.getpwnam(self.user) if self.user is not None else None
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        auth = ["--auth=trust"]
        if password is not None:
            # The password file is read by initdb only, as the server's user, then removed.
            pwfile = self.root / "pwfile"
            pwfile.write_text(password + "\n")
            os.chmod(pwfile, 0o600)
            if owner is not None:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._pg(
                "initdb", "-D", str(self.data), "-U", self.superuser, *auth, "-E", "UTF8",
                "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
        finally:
            (self.root / "pwfile").unlink(missing_ok=True)
        fast = " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.durable:
            fast = ""
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            + fast,
            "start",
        )  # fmt: skip

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / program), *args],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}{tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "t", *, name: str | None = None) -> str:
        """A new, empty database (``name``, or a fresh one made from ``prefix``); its URL."""
        import psycopg  # the postgresql extra: imported only by what starts a server

        if name is None:
            with self._mutex:
                self._names += 1
                name = f"{prefix}_{os.getpid()}_{self._names}"
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"not a plain database name: {name!r}")
        with psycopg.connect(self.url(), autocommit=True, password=self.password) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (its postmaster.pid file), else None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            # A throwaway test server need not write a checkpoint; the demo's does.
            mode = "fast" if self.durable else "immediate"
            self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
