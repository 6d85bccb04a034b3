"""``ivr serve --workers N`` (ivr/workers.py, docs/operations.md "Workers"): N worker processes on
one port under a supervisor that forwards signals, restarts the dead and gives up on a worker
that cannot stay up; the background jobs run in exactly one of them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli import main
from ivr.cli.main import build_parser
from ivr.config import load_config
from ivr.harness.fake_asterisk import FakeAsterisk
from ivr.platforms.asterisk import ari
from ivr.service import ARI, create_app, worker_asterisk
from ivr.workers import RestartPolicy, Supervisor, Worker, parse_workers, usable_cores
from tests.test_asterisk_e2e import CALLER, CONSENT_LINE, config_file, still_clock
from tests.test_asterisk_e2e import until as until_async

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # generous: the machine is shared and loaded; every wait ends as soon as it can


def until(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something true, or fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5", ""])
def test_a_bad_worker_count_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--workers", bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"expected a number of worker processes ≥ 1 or 'auto', got {bad!r}" in err


def test_workers_default_to_one_and_auto_is_the_usable_cores() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).workers == 1
    assert parser.parse_args(["serve", "--workers", "3"]).workers == 3
    assert parser.parse_args(["serve", "--workers", "auto"]).workers == usable_cores()
    assert usable_cores() == len(os.sched_getaffinity(0))
    # The cores this process may use, not those of the machine: pinned to one core, auto is 1.
    pinned = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from ivr.workers import parse_workers; print(parse_workers('auto'))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.strip() == "1"
    assert parse_workers("AUTO") == usable_cores()


def test_restart_delays_double_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay=1.0, max_delay=30.0)
    assert [policy.delay(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


# --------------------------------------------------------------------------- the supervisor alone

# A stand-in worker: says it is ready on the descriptor it is given, then behaves as told.
FAKE = textwrap.dedent(
    """
    import os, signal, sys, time
    fd, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if mode == "fail-at-start":
        sys.exit(5)
    if mode == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "polite":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.write(fd, b"ready\\n")
    if mode == "crash":
        sys.exit(3)
    while os.read(fd, 1):  # until the supervisor is gone (or SIGTERM)
        pass
    """
)


def fake_command(mode: Callable[[int], str], log: Path) -> Callable[[int, int], list[str]]:
    return lambda index, fd: [sys.executable, "-c", FAKE, str(fd), mode(index), str(log)]


def starts(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


QUICK = RestartPolicy(stable_seconds=30.0, first_delay=0.01, max_delay=0.05, give_up_after=3)


async def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    supervisor = Supervisor(
        fake_command(lambda i: "crash" if i == 1 else "wait", log), 2, policy=QUICK
    )
    code = await asyncio.wait_for(supervisor.run(), DEADLINE)
    assert code == 1
    assert supervisor.failed == "worker 1 died 3 times in a row within 30 s of its start"
    assert len(starts(log)) == 1 + 3  # worker 0 once; worker 1 at the start and twice again


async def test_a_worker_that_fails_before_listening_ends_the_start(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    supervisor = Supervisor(fake_command(lambda i: "fail-at-start", log), 3, policy=QUICK)
    assert await asyncio.wait_for(supervisor.run(), DEADLINE) == 1
    assert supervisor.failed == "a worker did not start"
    assert len(starts(log)) == 1  # worker 0 first and alone: the others were never started


async def test_a_worker_deaf_to_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    ready = asyncio.Event()
    supervisor = Supervisor(
        fake_command(lambda i: "deaf" if i == 0 else "wait", log),
        2,
        policy=QUICK,
        stop_timeout=0.5,
        on_ready=ready.set,
    )
    running = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(ready.wait(), DEADLINE)
    supervisor.stop()
    assert await asyncio.wait_for(running, DEADLINE) == 1
    codes = [slot.process.returncode for slot in supervisor.slots if slot.process]
    assert codes == [-signal.SIGKILL, -signal.SIGTERM]  # the fake does not handle SIGTERM


async def test_stopping_every_worker_cleanly_exits_zero(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    ready = asyncio.Event()
    supervisor = Supervisor(fake_command(lambda i: "polite", log), 2, on_ready=ready.set)
    running = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(ready.wait(), DEADLINE)
    supervisor.stop()
    assert await asyncio.wait_for(running, DEADLINE) == 0
    assert [slot.process.returncode for slot in supervisor.slots if slot.process] == [0, 0]


# --------------------------------------------------------------------------- the real service


def healthz(port: int) -> dict[str, Any] | None:
    """One /healthz answer on a new connection; None when nobody answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            body: dict[str, Any] = json.load(resp)
            return body
    except OSError:
        return None


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@contextmanager
def service(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``ivr serve --port 0 *extra`` on a fresh data directory; its stderr goes to a file."""
    env = {k: v for k, v in os.environ.items() if k not in ("IVR_MASTER_KEY", "TWILIO_AUTH_TOKEN")}
    log = tmp_path / "stderr.log"
    data = tmp_path / "var"
    argv = [sys.executable, "-m", "ivr", "serve", "--port", "0", "--data-dir", str(data), *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=out, text=True)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def logged_port(proc: subprocess.Popen[str], log: Path, pattern: str) -> int:
    def port() -> int | None:
        assert proc.poll() is None, log.read_text()
        found = re.search(pattern, log.read_text())
        return int(found.group(1)) if found else None

    return int(until(port, "the listening line"))


def answers_from(port: int, pids: set[int], latest: dict[int, dict[str, Any]]) -> None:
    """Ask /healthz on new connections until every one of ``pids`` has answered (the kernel
    spreads connections over the workers by a hash of their addresses, so this takes a few
    tries); ``latest``: each pid's last answer."""

    def ask() -> bool:
        body = healthz(port)
        if body is not None:
            latest[body["worker"]["pid"]] = body
        return pids <= set(latest)

    until(ask, f"answers from each of {sorted(pids)}")


def test_two_workers_share_the_port_one_runs_the_jobs_a_killed_one_comes_back(
    tmp_path: Path,
) -> None:
    with service(tmp_path, "--workers", "2") as (proc, log):
        port = logged_port(proc, log, r"listening on http://127\.0\.0\.1:(\d+) \(2 workers\)")
        pids = {int(p) for p in re.findall(r"worker \d \(pid (\d+)\) listening", log.read_text())}
        assert len(pids) == 2 and proc.pid not in pids
        latest: dict[int, dict[str, Any]] = {}
        answers_from(port, pids, latest)
        workers = sorted((b["worker"]["index"], b["worker"]["of"]) for b in latest.values())
        assert workers == [(0, 2), (1, 2)]
        assert all(b["status"] == "ok" for b in latest.values())
        # Whichever worker answers counts the CPU of all of them (what ivr loadtest reads): a
        # later reading is at least what each worker said of itself earlier, together.
        earlier = sum(b["cpu_seconds"] for b in latest.values())
        now = until(lambda: healthz(port), "/healthz")["worker"]["all_workers_cpu_seconds"]
        assert now >= earlier > 0
        (leader,) = [pid for pid, b in latest.items() if b["background_jobs"]["runs_here"]]
        assert (tmp_path / "var" / "master.key").exists()  # made once, by worker 0, alone

        # SIGKILL the worker that runs the background jobs: the supervisor starts another in
        # its place, and one of the living workers takes the jobs over.
        os.kill(leader, signal.SIGKILL)
        until(lambda: "killed by SIGKILL" in log.read_text(), "the death to be logged")
        (survivor,) = pids - {leader}

        def new_leader() -> int | None:
            body = healthz(port)
            if body is None:
                return None
            pid = body["worker"]["pid"]
            if pid != leader and body["background_jobs"]["runs_here"]:
                return int(pid)
            return None

        taken_over_by = until(new_leader, "another worker to run the background jobs")
        assert taken_over_by != leader

        def restarted() -> set[int]:
            listening = re.findall(r"worker \d \(pid (\d+)\) listening", log.read_text())
            return {int(p) for p in listening} - pids

        (new,) = until(restarted, "the restarted worker to listen")
        assert new != leader
        now = {survivor, new}
        latest.clear()
        answers_from(port, now, latest)
        assert [pid for pid, b in latest.items() if b["background_jobs"]["runs_here"]] == [
            taken_over_by
        ]

        # SIGTERM to the supervisor: every worker stops gracefully, all exit 0, promptly.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0, log.read_text()
        assert time.monotonic() - started < 30
        text = log.read_text()
        for pid in now:
            assert re.search(rf"worker \d \(pid {pid}\) stopped: exit status 0", text)
            assert gone(pid)
        assert text.count("vault closed") == 2  # the two living workers; the killed one never did


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    with service(tmp_path, "--workers", "2") as (proc, log):
        logged_port(proc, log, r"listening on http://127\.0\.0\.1:(\d+) \(2 workers\)")
        pids = {int(p) for p in re.findall(r"worker \d \(pid (\d+)\) listening", log.read_text())}
        proc.kill()  # no chance to forward anything: the workers see their link close
        proc.wait()
        until(lambda: all(gone(pid) for pid in pids), "the workers to stop by themselves")
        text = log.read_text()
        assert text.count("the supervisor is gone; stopping") == 2
        assert text.count("vault closed") == 2  # a graceful stop, not a crash


def test_one_worker_is_the_process_itself(tmp_path: Path) -> None:
    with service(tmp_path) as (proc, log):
        port = logged_port(proc, log, r"listening on http://127\.0\.0\.1:(\d+)")
        body = until(lambda: healthz(port), "/healthz")
        own = body["worker"].pop("all_workers_cpu_seconds")
        assert body["worker"] == {"index": 0, "of": 1, "pid": proc.pid}
        assert abs(own - body["cpu_seconds"]) < 0.05  # one process: its own time
        assert body["background_jobs"]["runs_here"] is True
        assert "ivr.workers" not in log.read_text()  # no supervisor
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0


# --------------------------------------------------------------------------- Asterisk


async def test_each_worker_registers_its_own_stasis_application(tmp_path, monkeypatch) -> None:
    """``<app>-<index>``: Asterisk gives a name to one websocket only, so two workers under one
    name would take it from each other (ApplicationReplaced); the dialplan spreads calls over
    the names, and each worker's bridge and channel ids carry its own instance tag."""
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
    assert worker_asterisk(config, Worker()) is config  # one worker: the name as configured
    apps = [
        create_app(config, tmp_path / "var", fsync=False, clock=still_clock(), worker=Worker(i, 2))
        for i in range(2)
    ]
    servers = [TestServer(app) for app in apps]
    try:
        for server in servers:
            await server.start_server()
        for name in ("ivr-0", "ivr-1"):
            await fake.wait_connected(app=name)
        assert fake.listener("ivr") is None
        assert [app[ARI].settings.app for app in apps] == ["ivr-0", "ivr-1"]
        tags = [app[ARI].instance for app in apps]
        assert tags == [ari.instance_tag("ivr-0"), ari.instance_tag("ivr-1")]
        assert tags[0] != tags[1]
        # A call the dialplan sends to Stasis(ivr-1) is worker 1's, and only worker 1's.
        call = await fake.place_call(CONSENT_LINE, CALLER, args=[CONSENT_LINE], app="ivr-1")
        await until_async(lambda: call.channel_id in apps[1][ARI].calls, "worker 1 to take it")
        assert call.channel_id not in apps[0][ARI].calls
        assert not any(app[ARI].replaced for app in apps)
    finally:
        for server in servers:
            await server.close()
        await fake.stop()
