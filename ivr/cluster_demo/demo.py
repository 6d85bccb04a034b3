"""``ivr cluster demo``: a whole cluster on one machine, all on loopback (docs/deploy.md).

What runs, in the order it starts (and the reverse order it stops):

1. PostgreSQL (ivr/cluster_demo/postgres.py), with a password: two databases, ``ivr_catalog``
   (the catalog) and ``ivr_keys`` (the key store, apart from the catalog as in production);
2. SeaweedFS (ivr/cluster_demo/seaweedfs.py) with the bucket ``ivr-recordings``;
3. the nodes: ``ivr serve`` each, with a data directory and a configuration file of its own
   (the embedded demo configuration plus ``public_url`` and ``[storage]``), the same master key,
   catalog, key store and bucket. The first starts alone (it migrates the databases and
   synthesises the prompts into the shared prompt cache), the others when it serves;
4. HAProxy (ivr/cluster_demo/haproxy.py) in front of them.

The secrets made for the demo (the master key, the Twilio auth token, PostgreSQL's password,
the bucket's keys) are in ``<dir>/env`` (0600), which a shell can source to run ``ivr``
against the cluster. Every child runs in a session of its own, so a terminal's Ctrl-C reaches
only this process, which then stops them in order: the load balancer first (no new calls),
the nodes (each finishes its calls, SIGTERM), then the object store and the database.
PostgreSQL's files are in a temporary directory of their own (its unprivileged user must be
able to enter it) and are removed at the stop, so the catalog and the key store live only as
long as the demo.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ivr.cluster_demo import haproxy, seaweedfs
from ivr.cluster_demo.postgres import PostgresServer
from ivr.config import DEMO_CONFIG
from storage.files import private_dir, private_file

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_NODES = 3
MAX_NODES = 9
BUCKET = "ivr-recordings"
PREFIX = "demo"
CATALOG_DB = "ivr_catalog"
KEYS_DB = "ivr_keys"
# The first node synthesises every prompt (a few seconds each with espeak-ng on a busy machine).
NODE_READY_DEADLINE_S = 300.0
LB_READY_DEADLINE_S = 60.0
NODE_STOP_DEADLINE_S = 70.0  # ivr serve: 30 s for connections, then the cleanup
POLL_S = 0.2  # between readiness probes (polled against a deadline)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What a running demo offers, as ``--json`` prints it."""

    load_balancer: str
    nodes: tuple[str, ...]
    directory: str
    env_file: str
    config_files: tuple[str, ...]
    data_dirs: tuple[str, ...]
    logs: tuple[str, ...]
    catalog_url: str
    keyring_url: str
    blob_url: str
    s3_endpoint: str
    pids: Mapping[str, int]  # every process the demo started, by role

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pids"] = dict(self.pids)
        return out


def node_config(public_url: str, catalog_url: str, keyring_url: str, blob_url: str) -> str:
    """A node's configuration: the embedded demo's, behind the load balancer's URL (Twilio signs
    the URL it called, and the streams' URLs are made from it), on the shared stores."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    head = "\n[service]\n"
    if head not in text or "\n[storage]" in text:
        raise RuntimeError(f"{DEMO_CONFIG} is not shaped as the demo expects ([service] once)")
    text = text.replace(head, f"{head}public_url = {json.dumps(public_url)}\n", 1)
    return (
        text
        + "\n# ivr cluster demo: every node on the same catalog, key store and bucket.\n"
        + "[storage]\n"
        + f"catalog_url = {json.dumps(catalog_url)}\n"
        + f"keyring_url = {json.dumps(keyring_url)}\n"
        + f"blob_url = {json.dumps(blob_url)}\n"
    )


def env_file_text(environ: Mapping[str, str]) -> str:
    lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(environ.items())]
    return "# ivr cluster demo: source this file to run ivr against the cluster\n" + "\n".join(
        [*lines, ""]
    )


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            if reply.status != 200:
                return None
            body: dict[str, Any] = json.loads(reply.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(eq=False)
class _Node:
    name: str
    port: int
    data_dir: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class Demo:
    """The running cluster: ``with Demo(directory) as demo: ... demo.endpoints``; leaving the
    block stops everything (module docstring)."""

    def __init__(self, directory: Path, *, nodes: int = DEFAULT_NODES, lb_port: int = 0) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes: expected 1..{MAX_NODES}, got {nodes}")
        if not 0 <= lb_port <= 65535:
            raise ValueError(f"load balancer port: expected 0..65535, got {lb_port}")
        self.directory = directory
        self.count = nodes
        self.lb_port = lb_port
        self.postgres: PostgresServer | None = None
        self.weed: seaweedfs.SeaweedFS | None = None
        self.proxy: haproxy.HAProxy | None = None
        self.nodes: list[_Node] = []
        self.endpoints: Endpoints | None = None
        self.clean_stop = True

    def __enter__(self) -> Demo:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------- start

    def _start(self) -> None:
        d = private_dir(self.directory)
        if any(d.iterdir()):
            raise RuntimeError(f"{d} is not empty: the demo starts from an empty directory")
        log.info("starting PostgreSQL")
        password = secrets.token_urlsafe(24)
        self.postgres = PostgresServer(password=password, durable=True, superuser="ivr")
        catalog_url = self.postgres.database(name=CATALOG_DB)
        keyring_url = self.postgres.database(name=KEYS_DB)
        log.info("starting SeaweedFS")
        self.weed = seaweedfs.start(d / "seaweedfs", new_session=True)
        self.weed.client().create_bucket(Bucket=BUCKET)
        blob_url = f"s3://{BUCKET}/{PREFIX}"

        lb_port, *ports = seaweedfs.free_ports(self.count + 1)
        lb_port = self.lb_port or lb_port
        lb_url = f"http://{HOST}:{lb_port}"
        environ = {
            "IVR_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "TWILIO_AUTH_TOKEN": secrets.token_hex(16),
            "PGPASSWORD": password,
            "IVR_PROMPT_CACHE": str(private_dir(d / "prompt-cache")),
            **self.weed.environ,
        }
        config_text = node_config(lb_url, catalog_url, keyring_url, blob_url)
        for i, port in enumerate(ports, start=1):
            name = f"node{i}"
            config = d / f"{name}.toml"
            config.write_text(config_text, encoding="utf-8")
            self.nodes.append(_Node(name, port, d / name, config, d / f"{name}.log"))
        # A shell that sources the file runs ivr commands as node1 (docs/operations.md: the
        # commands find the stores from IVR_CONFIG, as the service does).
        env_file = d / "env"
        shell = {
            "IVR_CONFIG": str(self.nodes[0].config),
            "IVR_DATA_DIR": str(self.nodes[0].data_dir),
        }
        with private_file(env_file) as fh:
            fh.write(env_file_text({**environ, **shell}).encode())

        child_env = {**os.environ, **environ}
        for name in ("IVR_CONFIG", "IVR_DATA_DIR"):  # each node is given its own
            child_env.pop(name, None)
        first, *others = self.nodes
        self._start_node(first, child_env)
        self._wait_served(first)
        for node in others:
            self._start_node(node, child_env)
        for node in others:
            self._wait_served(node)

        log.info("starting HAProxy on %s", lb_url)
        backends = [haproxy.Backend(n.name, HOST, n.port) for n in self.nodes]
        self.proxy = haproxy.start(d, HOST, lb_port, backends, new_session=True)
        self._wait_balanced(lb_url)

        pids = {
            "postgres": self.postgres.pid or 0,
            "seaweedfs": self.weed.process.pid,
            "haproxy": self.proxy.process.pid,
        }
        for node in self.nodes:
            assert node.process is not None
            pids[node.name] = node.process.pid
        self.endpoints = Endpoints(
            load_balancer=lb_url,
            nodes=tuple(n.url for n in self.nodes),
            directory=str(d),
            env_file=str(env_file),
            config_files=tuple(str(n.config) for n in self.nodes),
            data_dirs=tuple(str(n.data_dir) for n in self.nodes),
            logs=(*(str(n.log) for n in self.nodes), str(self.proxy.log), str(self.weed.log)),
            catalog_url=catalog_url,
            keyring_url=keyring_url,
            blob_url=blob_url,
            s3_endpoint=self.weed.endpoint,
            pids=pids,
        )

    def _start_node(self, node: _Node, env: Mapping[str, str]) -> None:
        log.info("starting %s on %s", node.name, node.url)
        argv = [sys.executable, "-m", "ivr", "serve", "--config", str(node.config)]
        argv += ["--data-dir", str(node.data_dir), "--host", HOST, "--port", str(node.port)]
        with node.log.open("wb") as out:
            node.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )

    def _wait_served(self, node: _Node) -> None:
        assert node.process is not None
        deadline = time.monotonic() + NODE_READY_DEADLINE_S
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(
                    f"{node.name} exited with {node.process.returncode}:\n{_tail(node.log)}"
                )
            health = _get_json(node.url + "/healthz")
            if health is not None and health.get("status") != "stopping":
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"{node.name} did not serve within {NODE_READY_DEADLINE_S:g} s")

    def _wait_balanced(self, lb_url: str) -> None:
        """Until every node has answered ``/healthz`` through the load balancer."""
        assert self.proxy is not None
        want = {n.process.pid for n in self.nodes if n.process is not None}
        seen: set[int] = set()
        deadline = time.monotonic() + LB_READY_DEADLINE_S
        while seen != want:
            if self.proxy.process.poll() is not None:
                raise RuntimeError(f"HAProxy exited:\n{self.proxy.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(seen)} of {len(want)} nodes answered through HAProxy within "
                    f"{LB_READY_DEADLINE_S:g} s:\n{self.proxy.log_tail()}"
                )
            health = _get_json(lb_url + "/healthz")
            if health is not None:
                seen.add(int(health.get("worker", {}).get("pid", 0)))
            else:
                time.sleep(POLL_S)

    # ---------------------------------------------------------------------- run, stop

    def dead_nodes(self) -> list[str]:
        """Nodes that have exited (killed to see what the others do, or failed)."""
        return [n.name for n in self.nodes if n.process and n.process.poll() is not None]

    def stop(self) -> None:
        """Stop whatever runs, load balancer first, database last; idempotent."""
        if self.proxy is not None:
            log.info("stopping HAProxy")
            haproxy.stop(self.proxy)
            self.proxy = None
        running = [n for n in self.nodes if n.process and n.process.poll() is None]
        for node in running:
            assert node.process is not None
            log.info("stopping %s", node.name)
            node.process.send_signal(signal.SIGTERM)
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=NODE_STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %g s: killed", node.name, NODE_STOP_DEADLINE_S)
                node.process.kill()
                node.process.wait()
            if node.process.returncode != 0:
                log.error("%s exited with %s", node.name, node.process.returncode)
                self.clean_stop = False
        if self.weed is not None:
            log.info("stopping SeaweedFS")
            seaweedfs.stop(self.weed)
            self.weed = None
        if self.postgres is not None:
            log.info("stopping PostgreSQL")
            self.postgres.stop()
            self.postgres = None


def instructions(e: Endpoints) -> str:
    """What to do with a running demo, for people."""
    beside = Path(sys.executable).with_name("ivr")
    ivr = str(beside) if beside.exists() else "ivr"
    nodes = " ".join(f"--node {url}" for url in e.nodes)
    last_config, last_data = e.config_files[-1], e.data_dirs[-1]
    rows = [f"  load balancer  {e.load_balancer}  (HAProxy)"]
    rows += [f"  node{i}          {url}" for i, url in enumerate(e.nodes, start=1)]
    rows += [
        f"  catalog        {e.catalog_url}",
        f"  key store      {e.keyring_url}",
        f"  recordings     {e.blob_url} at {e.s3_endpoint}",
        f"  files, logs    {e.directory}",
        f"  secrets        {e.env_file} (0600: master key, Twilio token, passwords)",
    ]
    return "\n".join(
        [
            f"ivr cluster demo: {len(e.nodes)} nodes behind HAProxy, one PostgreSQL catalog and "
            "key store, one SeaweedFS bucket",
            *rows,
            "",
            "Place calls through the load balancer, from another shell:",
            f"  . {e.env_file}",
            f"  {ivr} simulate --url {e.load_balancer} --fast --press 1@2.5",
            f"  {ivr} simulate --url {e.load_balancer} --fast --to +15550100002",
            "Each webhook and stream of a call straight to the next node in turn:",
            f"  {ivr} simulate --url {e.load_balancer} {nodes} --fast --press 1@2.5",
            "What was recorded (every node reads the same catalog, key store and bucket):",
            f"  {ivr} recordings list    # as node1 (the env file sets IVR_CONFIG, IVR_DATA_DIR)",
            f"  {ivr} recordings list --config {last_config} --data-dir {last_data}",
            "",
            "Ctrl-C stops everything.",
        ]
    )


@contextlib.contextmanager
def demo_directory(given: Path | None) -> Iterator[Path]:
    """``given`` (kept afterwards: the nodes' logs and data directories), or a temporary
    directory removed at the end."""
    if given is not None:
        yield given
        return
    made = Path(tempfile.mkdtemp(prefix="ivr-cluster-"))
    try:
        yield made / "demo"
    finally:
        shutil.rmtree(made, ignore_errors=True)
