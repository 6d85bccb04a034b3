"""HAProxy in front of the nodes: its configuration (docs/deploy.md explains it line by line)
and a running instance for ``ivr cluster demo``.

HAProxy is Debian's ``haproxy`` package (``make cluster`` installs it when missing and run as
root). It runs in the foreground (``-db``), so it is this process's child and stops with it;
under root it binds its port, then drops to the ``haproxy`` user (or ``nobody``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_DEADLINE_S = 20.0  # a soft stop waits for open connections (calls' streams) this long

# The health check: /healthz answers 200 while the process serves (docs/healthz.md), also while
# it finishes its calls after SIGTERM; then its "status" is "stopping", and it takes no new work.
HEALTH_STOPPING = '"status": *"stopping"'


@dataclass(frozen=True, slots=True)
class Backend:
    """One node as HAProxy sees it: a name and where its ``ivr serve`` listens."""

    name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"backend name {self.name!r} is not a plain name")
        if not 0 < self.port < 65536:
            raise ValueError(f"backend {self.name}: port {self.port} is not 1..65535")


def config_text(
    listen_host: str, listen_port: int, backends: Sequence[Backend], *, run_as: str | None
) -> str:
    """The configuration the demo runs (and docs/deploy.md shows)."""
    if not backends:
        raise ValueError("HAProxy needs at least one backend")
    user = f"    user {run_as}\n    group {_group_of(run_as)}\n" if run_as else ""
    servers = "".join(f"    server {b.name} {b.host}:{b.port}\n" for b in backends)
    return f"""\
# ivr cluster demo: HAProxy in front of {len(backends)} ivr serve nodes (docs/deploy.md).
global
    log stdout format raw local0 info
{user}    maxconn 4096
    # A soft stop (SIGUSR1) lets the streams of calls in progress finish, at most this long.
    hard-stop-after {STOP_DEADLINE_S:g}s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    # A media stream is a websocket: once upgraded, the connection is a tunnel and this
    # inactivity timeout replaces client/server. A live stream carries audio every 20 ms, so
    # only a dead one falls idle; long, so that nothing alive is ever cut.
    timeout tunnel 1h
    timeout client-fin 30s
    timeout server-fin 30s

frontend ivr
    bind {listen_host}:{listen_port}
    default_backend nodes

backend nodes
    # Each request to the next node: a call's webhooks and streams meet different nodes,
    # and the node holding the call takes them through the relay (docs/cluster.md).
    balance roundrobin
    option httpchk GET /healthz
    http-check expect ! rstring '{HEALTH_STOPPING}'
    default-server check inter 2s fall 2 rise 2
{servers}"""


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def haproxy_binary() -> str:
    """``haproxy`` on PATH, or Debian's /usr/sbin/haproxy (not on a plain user's PATH)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(
            "HAProxy is not installed: apt-get install haproxy (make cluster does it as root)"
        )
    return found


def run_as() -> str | None:
    """Under root, the unprivileged user HAProxy drops to after binding; else None."""
    if os.geteuid() != 0:
        return None
    for name in ("haproxy", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and there is no haproxy or nobody user to run as")


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    config: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start(
    workdir: Path,
    listen_host: str,
    listen_port: int,
    backends: Sequence[Backend],
    *,
    new_session: bool = False,
) -> HAProxy:
    """Write the configuration, check it (``haproxy -c``), start HAProxy in the foreground
    (``new_session``: out of the terminal's process group, as seaweedfs.start)."""
    binary = haproxy_binary()
    config = workdir / "haproxy.cfg"
    config.write_text(config_text(listen_host, listen_port, backends, run_as=run_as()))
    checked = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {config}: {checked.stdout}{checked.stderr}")
    log = workdir / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=new_session,
        )
    return HAProxy(process, config, log)


def stop(proxy: HAProxy) -> None:
    """A soft stop (SIGUSR1: stop listening, let open connections finish; HAProxy ends them
    itself after ``hard-stop-after``), then SIGKILL should it still run after that."""
    if proxy.process.poll() is None:
        proxy.process.send_signal(signal.SIGUSR1)
    try:
        proxy.process.wait(timeout=STOP_DEADLINE_S + 5)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait(timeout=STOP_DEADLINE_S)
