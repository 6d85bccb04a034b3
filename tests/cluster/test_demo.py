"""``ivr cluster demo`` (``make cluster``, docs/deploy.md): PostgreSQL, SeaweedFS, three nodes and
HAProxy started as a newcomer would start them; calls of every consent mode placed through the
load balancer decide and record as on one process; the recordings are read from another node's
configuration; Ctrl-C stops everything and nothing the demo started is left running."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ivr.cluster_demo import haproxy
from ivr.harness.twilio_sim import CallOptions, simulate_call
from tests.test_relay import CASES

ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 300.0  # the first node synthesises every prompt on a shared, loaded machine
STOP_DEADLINE_S = 150.0  # HAProxy's soft stop, the nodes', SeaweedFS's, PostgreSQL's

# Every consent mode: (line, options, decision, recording status), as tests/test_relay.py
# places them on processes sharing a directory.
CALLS = CASES


def _read_env(path: Path) -> dict[str, str]:
    """The demo's env file: ``export NAME=VALUE`` lines, shell-quoted."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            (out[name],) = shlex.split(value)
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Running:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, endpoints: dict[str, Any]):
        self.process = process
        self.log = log
        self.endpoints = endpoints
        self.env = _read_env(Path(endpoints["env_file"]))

    def ivr(self, *args: str, node: int | None = 0) -> subprocess.CompletedProcess[str]:
        """An ``ivr`` command with node ``node``'s configuration and data directory (None: as
        a shell that sourced the env file runs it)."""
        e = self.endpoints
        argv = [sys.executable, "-m", "ivr", *args]
        if node is not None:
            argv += ["--config", e["config_files"][node], "--data-dir", e["data_dirs"][node]]
        return subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("demo")
    log = work / "demo.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ivr", "cluster", "demo", "--dir", str(work / "c"), "--json"],
            cwd=ROOT,  # the nodes are started the same way: this checkout's code, not another
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_DEADLINE_S)
        line = process.stdout.readline() if ready else b""
        assert line, f"the demo printed no endpoints:\n{log.read_text()[-3000:]}"
        yield Running(process, log, json.loads(line))
    finally:
        if process.poll() is None:  # a test failed before the stop: stop it the same way
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_every_consent_mode_decides_and_records_through_the_load_balancer(demo: Running):
    lb = demo.endpoints["load_balancer"]
    token = demo.env["TWILIO_AUTH_TOKEN"]
    results = await asyncio.gather(
        *(
            simulate_call(CallOptions(url=lb, to=to, fast=True, auth_token=token, **kw))
            for to, kw, _, _ in CALLS
        )
    )
    for (to, kw, decision, status), result in zip(CALLS, results, strict=True):
        assert result.error is None, (to, kw, result.transcript)
        assert (result.decision, result.recording_status) == (decision, status), (to, kw)
        if status == "complete":
            assert result.status_response is not None
            assert result.status_response["frames_lost"] == 0
        # Another node's configuration reads the same catalog, key store and bucket.
        if status is not None:
            shown = demo.ivr("recordings", "show", result.recording_id, "--json", node=2)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["status"] == status
    recorded = [r for r, (_, _, _, s) in zip(results, CALLS, strict=True) if s == "complete"]
    # A shell that sources the env file lists them without naming a configuration.
    listed = demo.ivr("recordings", "list", "--json", node=None)
    assert listed.returncode == 0, listed.stderr
    assert {r.recording_id for r in recorded} <= {row["id"] for row in json.loads(listed.stdout)}
    exported = demo.ivr(
        "recordings", "export", recorded[0].recording_id, "-o", str(demo.log.with_name("a.wav"))
    )
    assert exported.returncode == 0, exported.stderr
    # HAProxy spread the calls' requests: every node answered some of them.
    for node_log in demo.endpoints["logs"][:3]:
        assert "POST /twilio/" in Path(node_log).read_text(), node_log


def test_ctrl_c_stops_everything_the_demo_started(demo: Running):
    # The database asks for the password the demo made (in its env file only).
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(demo.endpoints["catalog_url"], connect_timeout=10).close()
    pids = demo.endpoints["pids"]
    assert set(pids) == {"postgres", "seaweedfs", "haproxy", "node1", "node2", "node3"}
    assert all(_running(pid) for pid in pids.values()), pids
    started = time.monotonic()
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=STOP_DEADLINE_S) == 0, demo.log.read_text()[-3000:]
    assert [name for name, pid in pids.items() if _running(pid)] == []
    # The load balancer's port is closed, and the nodes' too.
    for url in (demo.endpoints["load_balancer"], *demo.endpoints["nodes"]):
        host, port = url.removeprefix("http://").split(":")
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
            pass
    assert "stopped" in demo.log.read_text()
    print(f"stopped in {time.monotonic() - started:.1f} s")


def test_the_haproxy_configuration_in_docs_deploy_is_the_demos(tmp_path: Path):
    """docs/deploy.md shows the configuration the demo writes (three nodes on 8081-8083, the
    load balancer on 8080), and HAProxy accepts it."""
    backends = [haproxy.Backend(f"node{i}", "127.0.0.1", 8080 + i) for i in (1, 2, 3)]
    text = haproxy.config_text("127.0.0.1", 8080, backends, run_as="haproxy")
    doc = (ROOT / "docs" / "deploy.md").read_text()
    shown = doc.split("```haproxy\n", 1)[1].split("```", 1)[0]
    assert shown == text
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run(
        [haproxy.haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
