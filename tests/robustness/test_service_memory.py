"""A real ``ivr serve`` fed hostile HTTP input: its resident size after the run against what it
was after a warm-up (at most 1.2 times, as issue 12 asks),
no answer 500, no traceback in its log, and a normal call afterwards records complete.

The fuzzers beside this one run the services inside the test process, where hypothesis's own
bookkeeping grows with every example (about 330 MiB for 20,000), so only a separate process says
what the service itself keeps. Inputs are drawn from a seeded generator: signed webhooks with
hostile field values, unsigned and forged ones, oversized bodies, broken encodings, status
callbacks for calls nobody knows, and admin API requests with bad tokens and parameters.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import aiohttp

from ivr.config import DEMO_TWILIO_AUTH_TOKEN
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature

ROOT = Path(__file__).parent.parent.parent
WARM_UP = 1000
CONCURRENCY = 16
# Until refusals stopped holding their request in a reference cycle (ivr/serving.py,
# plain_errors), 20,000 inputs took it from 111.7 to 136.4 MiB (1.22x), most of it oversized
# bodies waiting for the rare cyclic collection; now about 1.00x.
MAX_GROWTH = 1.2
HOSTILE = ["²", "١٢", "1e400", "Infinity", "-1", "", "\x00", "é" * 300, "[" * 5000, "0" * 5000]
LINES = ["+15550100001", "+15550100002", "+15550100003", "+15550100004", "+15550100099"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def _form(rng: random.Random) -> dict[str, str]:
    form = {
        "CallSid": "CA" + rng.randbytes(16).hex(),
        "AccountSid": "AC" + "0" * 32,
        "From": "+46701234567",
        "To": rng.choice(LINES),
        "CallStatus": rng.choice(["ringing", "completed", "in-progress", "busy"]),
        "Direction": "inbound",
    }
    for _ in range(rng.randint(0, 3)):  # hostile values in random fields
        form[rng.choice([*form, "CallDuration", "Extra"])] = rng.choice(HOSTILE)
    return form


async def _one(http: aiohttp.ClientSession, base: str, rng: random.Random) -> int:
    kind = rng.randrange(6)
    path = rng.choice(["/twilio/voice", "/twilio/status", "/twilio/continue"])
    url = base + path
    if kind == 0:  # signed, hostile values
        form = _form(rng)
        signature = compute_signature(DEMO_TWILIO_AUTH_TOKEN, url, form)
        body = urllib.parse.urlencode(form).encode()
        headers: dict[str, str] = {SIGNATURE_HEADER: signature}
    elif kind == 1:  # forged
        body = urllib.parse.urlencode(_form(rng)).encode()
        headers = {SIGNATURE_HEADER: rng.choice(["x", "é", "A" * 200])}
    elif kind == 2:  # oversized
        body = b"a=" + b"x" * rng.choice([70_000, 300_000])
        headers = {}
    elif kind == 3:  # not a form
        body = rng.choice([b"\xff\xfe", b"%zz=1", b"{}", b"a" * 100 + b"&" * 500])
        headers = {"Content-Type": rng.choice(["application/json", "multipart/form-data"])}
    else:  # the admin API, without a valid token
        limit = urllib.parse.quote(rng.choice(HOSTILE[:6]))
        target = rng.choice([f"/api/v1/recordings?limit={limit}", "/api/v1/recordings/rec_x"])
        async with http.get(base + target, headers={"Authorization": "Bearer nope"}) as resp:
            await resp.read()
            return resp.status
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    async with http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        status = resp.status
    if kind == 0:  # as Twilio would, end the call: a call never ended holds a call slot
        ended = {**_form(random.Random(0)), "CallSid": form["CallSid"], "CallStatus": "completed"}
        ended.pop("CallDuration", None)
        end_url = base + "/twilio/status"
        signed = {SIGNATURE_HEADER: compute_signature(DEMO_TWILIO_AUTH_TOKEN, end_url, ended)}
        async with http.post(end_url, data=ended, headers=signed) as resp:
            await resp.read()
    return status


async def _feed(base: str, count: int, rng: random.Random) -> list[int]:
    statuses: list[int] = []
    queue = iter(range(count))

    async def worker(http: aiohttp.ClientSession) -> None:
        for _ in queue:
            statuses.append(await _one(http, base, rng))

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return statuses


async def test_the_service_keeps_its_memory_under_hostile_input(
    tmp_path, robustness_inputs, robustness_report
):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("IVR_MASTER_KEY", "TWILIO_AUTH_TOKEN")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ivr", "serve", "--port", str(port), "--data-dir", tmp_path],
            cwd=ROOT,
            env=env,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(base + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the service did not come up"
                await asyncio.sleep(0.05)
        rng = random.Random(20261130)
        statuses = await _feed(base, WARM_UP, rng)
        warm = _rss_kib(proc.pid)
        statuses += await _feed(base, robustness_inputs, rng)
        after = _rss_kib(proc.pid)
        robustness_report.append(
            f"ivr serve's resident memory {warm / 1024:.1f} MiB after {WARM_UP} hostile HTTP "
            f"inputs, {after / 1024:.1f} MiB after {robustness_inputs} more "
            f"({after / warm:.2f}x); answers: "
            + ", ".join(f"{s} x{statuses.count(s)}" for s in sorted(set(statuses)))
        )
        assert 500 not in statuses, f"{statuses.count(500)} answers were 500"
        assert after <= MAX_GROWTH * warm, (warm, after)
        result = await simulate_call(
            CallOptions(url=base, presses=[(2.0, "1")], fast=True, duration=2.0)
        )
        assert result.error is None and result.recording_status == "complete", result.transcript
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert code == 0, text[-2000:]
