"""A real Asterisk for the tests: generated configuration, start, wait until booted, stop.

``Asterisk`` runs the build that ``tests/asterisk/build.sh`` made, on loopback only, with every
file it writes (configuration, logs, control socket, astdb) in one scratch folder. The
configuration is the one docs/asterisk.md describes, cut to what the tests use: ARI on
``http.conf``'s port, one PJSIP endpoint for the sipp caller and one for the sipp agent, a
dialplan that sends E.164 numbers to the Stasis application, and an RTP port range that cannot
meet the service's own.

Readiness is a handshake, never a sleep: ``core waitfullybooted`` over the control socket
returns once every module is loaded, and then ARI must answer ``GET /asterisk/info``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"

# What the tests need and nothing else (autoload = no): each module's own `requires` list in the
# Asterisk source decides what must come with it.
MODULES = (
    # infrastructure
    "res_timing_timerfd",
    "res_sorcery_config",
    "res_sorcery_memory",
    "res_sorcery_astdb",
    "res_pjproject",
    "res_rtp_asterisk",
    "res_rtp_multicast",
    "res_http_websocket",
    "res_websocket_client",
    # SIP
    "res_pjsip",
    "res_pjsip_session",
    "res_pjsip_pubsub",
    "res_pjsip_sdp_rtp",
    "res_pjsip_endpoint_identifier_ip",
    "res_pjsip_dtmf_info",
    "res_pjsip_caller_id",
    "chan_pjsip",
    # ARI and Stasis
    "res_stasis",
    "res_stasis_answer",
    "res_stasis_playback",
    "res_stasis_recording",
    "res_stasis_snoop",
    "res_ari",
    "res_ari_model",
    "res_ari_channels",
    "res_ari_bridges",
    "res_ari_events",
    "res_ari_applications",
    "res_ari_asterisk",
    "app_stasis",
    # external media and bridges
    "chan_rtp",
    "chan_bridge_media",
    "bridge_simple",
    "bridge_softmix",
    "bridge_native_rtp",
    "bridge_holding",
    # G.711 and the dialplan
    "codec_ulaw",
    "codec_alaw",
    "codec_a_mu",
    "format_wav",
    "pbx_config",
    "func_channel",
    "func_callerid",
)


def build() -> Path:
    """The install prefix of the cached build (building it first when needed)."""
    override = os.environ.get("ASTERISK_PREFIX")
    if override:
        return Path(override)
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SIGNALLING = itertools.count(10000 + int.from_bytes(os.urandom(2), "big") % 5000)


def sip_port() -> int:
    """A UDP port for a sipp process: taken in turn from 10000-19999, below the kernel's
    ephemeral range (so a socket bound to port 0 meanwhile cannot take it) and below the
    Asterisk RTP range (free_udp_range), and checked free."""
    for port in _SIGNALLING:
        port = 10000 + (port - 10000) % 10000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("unreachable")


def free_udp_range(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports that are free now (checked one by one)."""
    for _ in range(200):
        low = 20000 + (int.from_bytes(os.urandom(2), "big") % 20000)
        low -= low % 2  # RTP takes even ports
        socks = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no free run of {size} UDP ports")


@dataclass(frozen=True)
class Ports:
    http: int
    sip: int
    agent_sip: int
    rtp: tuple[int, int]  # Asterisk's own RTP range


class AriError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"ARI {status}: {body[:200]}")
        self.status = status


class Asterisk:
    """One Asterisk process and its scratch folder."""

    APP = "ivr"
    APP_B = "ivr-b"  # a second service instance (dial "B" + the number)
    USER = "ivr"

    def __init__(self, prefix: Path, *, agent_number: str = "+15550100099") -> None:
        self.prefix = prefix
        self.root = Path(tempfile.mkdtemp(prefix="ivr-ast-"))  # short: the socket path is limited
        self.password = base64.b32encode(os.urandom(10)).decode().lower()
        self.ports = Ports(
            http=free_port(),
            sip=sip_port(),
            agent_sip=sip_port(),
            rtp=free_udp_range(200),
        )
        self.agent_number = agent_number
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    # -- configuration --------------------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "asterisk.conf"

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}/ari"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "full"

    def _write_config(self) -> None:
        for sub in ("etc", "lib", "spool", "run", "log", "agi"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r, p = self.root, self.prefix
        files = {
            "asterisk.conf": f"""
[directories]
astetcdir => {r}/etc
astmoddir => {p}/lib/asterisk/modules
astvarlibdir => {r}/lib
astdbdir => {r}/lib
astkeydir => {r}/lib
astdatadir => {p}/var/lib/asterisk
astagidir => {r}/agi
astspooldir => {r}/spool
astrundir => {r}/run
astlogdir => {r}/log
astsbindir => {p}/sbin

[options]
verbose = 3
debug = 0
nocolor = yes
transmit_silence = no
""",
            "modules.conf": "[modules]\nautoload = no\n"
            + "".join(f"load = {m}.so\n" for m in MODULES),
            "logger.conf": "[general]\n[logfiles]\nfull => notice,warning,error,verbose\n",
            "http.conf": f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\n"
            f"bindport = {self.ports.http}\n",
            "ari.conf": f"[general]\nenabled = yes\n\n[{self.USER}]\ntype = user\n"
            f"read_only = no\npassword = {self.password}\n",
            "rtp.conf": "[general]\n"
            f"rtpstart = {self.ports.rtp[0]}\nrtpend = {self.ports.rtp[1]}\n",
            "pjsip.conf": f"""
[transport-udp]
type = transport
protocol = udp
bind = 127.0.0.1:{self.ports.sip}

; The sipp caller: anything from loopback that is not a reply to our own INVITE.
[caller]
type = endpoint
context = from-sipp
disallow = all
allow = ulaw
dtmf_mode = rfc4733
direct_media = no
rtp_symmetric = no

[caller]
type = identify
endpoint = caller
match = 127.0.0.1

; The agent the service originates on forward_to: PJSIP/{{number}}@agent.
[agent]
type = endpoint
context = from-sipp
disallow = all
allow = ulaw
dtmf_mode = rfc4733
direct_media = no
aors = agent

[agent]
type = aor
contact = sip:agent@127.0.0.1:{self.ports.agent_sip}
""",
            "extensions.conf": f"""
[general]
static = yes
writeprotect = yes

[from-sipp]
exten => _+X.,1,NoOp(consent service)
 same => n,Stasis({self.APP},${{EXTEN}})
 same => n,NoOp(after Stasis: decision=${{IVR_CONSENT_DECISION}} error=${{IVR_ERROR}})
 same => n,Hangup()

; A second service instance on the same PBX: its own application name.
exten => _B+X.,1,NoOp(second consent service)
 same => n,Stasis({self.APP_B},${{EXTEN:1}})
 same => n,NoOp(after Stasis: decision=${{IVR_CONSENT_DECISION}} error=${{IVR_ERROR}})
 same => n,Hangup()
""",
        }
        for name, text in files.items():
            (self.etc / name).write_text(text.lstrip())

    # -- process --------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(self.prefix / "lib")
        return env

    def cli(self, command: str, timeout: float = 30.0) -> str:
        done = subprocess.run(
            [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.conf), "-rx", command],
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"asterisk -rx {command!r}: {done.stdout.strip()}")
        return done.stdout

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None
        out = open(self.root / "log" / "stdout", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.conf), "-f", "-n"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        ctl = self.root / "run" / "asterisk.ctl"
        # The control socket appears once the core is up; `core waitfullybooted` then blocks
        # until every module has loaded. Each step is a handshake with the process itself.
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"asterisk exited at start:\n{self.tail_log()}")
            if ctl.exists():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.cli("core waitfullybooted", timeout=max(deadline - time.monotonic(), 1))
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"asterisk not booted in {timeout} s:\n{self.tail_log()}")
            time.sleep(0.05)
        info = self.ari("GET", "/asterisk/info")
        assert info["system"]["version"], info

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.cli("core stop now", timeout=10)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        if os.environ.get("IVR_KEEP_ASTERISK_LOGS") is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def tail_log(self, lines: int = 40) -> str:
        chunks = []
        for path in (self.root / "log" / "stdout", self.log_file):
            with contextlib.suppress(OSError):
                chunks.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)

    # -- ARI, for the tests' own checks ------------------------------------------------------------
    def ari(self, method: str, path: str, **query: str) -> Any:
        url = self.ari_url + path
        if query:
            url += "?" + "&".join(f"{k}={urllib.request.quote(v)}" for k, v in query.items())
        token = base64.b64encode(f"{self.USER}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            url, method=method, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raise AriError(exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(body) if body else None

    def channels(self) -> list[dict[str, Any]]:
        return list(self.ari("GET", "/channels"))

    def bridges(self) -> list[dict[str, Any]]:
        return list(self.ari("GET", "/bridges"))

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Channel names and bridge ids Asterisk still holds."""
        return (
            [f"{c['name']} ({c['id']})" for c in self.channels()],
            [b["id"] for b in self.bridges()],
        )
