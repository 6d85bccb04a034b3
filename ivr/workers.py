"""Several worker processes on one port: ``ivr serve --workers N`` (docs/operations.md, "Workers").

Theory of operation. With N > 1, ``ivr serve`` becomes a small supervisor that never opens the
vault; it starts N workers, each a whole service (``ivr serve --worker-index I``, a fresh
interpreter: nothing is forked from a process that already has an event loop or threads).

- **The port.** The supervisor binds the address once, without listening, on a socket with
  ``SO_REUSEPORT``: that fixes the port (``--port 0`` picks a free one, and the supervisor knows
  which) and keeps it reserved while workers come and go. Each worker then listens on its own
  ``SO_REUSEPORT`` socket on that port, and the kernel spreads new connections over the
  listening ones by a hash of the connection's addresses. A worker that is down listens nowhere,
  so new connections go only to the living ones; an inherited, shared listening socket would
  keep accepting for a worker that is gone or busy, and leaves the spread to whichever process
  wakes first. Only ``SO_REUSEPORT`` sockets of the same user can join, so a single-process
  ``ivr serve`` on the same port still fails with "address in use".
- **Start.** Worker 0 starts first and alone: it creates or migrates the vault, generates the
  master key on a first start, recovers what an earlier run left, and synthesises missing
  prompts, each of which must happen once. The others start when it listens.
- **Handshake.** Each worker gets one end of a socket pair (``--supervisor-fd``). It writes
  ``ready`` there once it listens; it reads end-of-file there when the supervisor is gone
  (even SIGKILLed), and then stops as on SIGTERM: no worker outlives its supervisor.
- **Signals.** SIGTERM or SIGINT to the supervisor is sent on to every worker as SIGTERM (the
  workers have their own process group, so a terminal's Ctrl-C reaches the supervisor only);
  each stops gracefully (recordings finalised), and whatever has not exited within
  :data:`STOP_TIMEOUT_SECONDS` is killed. The supervisor exits 0 when every worker did.
- **Restarts.** A worker that exits on its own is logged (exit status or signal) and started
  again with the same index. After a run of :attr:`RestartPolicy.stable_seconds` or more, at
  once; a worker that dies sooner than that after its start is started again after 1 s, 2 s,
  4 s, ... (doubling, at most :attr:`RestartPolicy.max_delay`). When one worker has died that
  quickly :attr:`RestartPolicy.give_up_after` times in a row, the supervisor stops the others
  and exits 1: a service that cannot stay up should fail where its own supervisor (systemd)
  sees it. A worker that fails before it ever listened at the first start ends the start the
  same way: exit 1, nothing restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 60.0  # a worker's graceful stop: 30 s for connections, then the cleanup
READY = b"ready\n"


@dataclass(frozen=True, slots=True)
class Worker:
    """Which worker this process is: ``index`` 0..``of``-1 (``of`` = 1: no supervisor)."""

    index: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.of:
            raise ValueError(f"worker index {self.index} is not in 0..{self.of - 1}")


ALONE = Worker()  # ``ivr serve`` without --workers: the one process


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as ``os.process_cpu_count``
    reports from Python 3.13), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def all_workers_cpu_seconds(worker: Worker, own: float) -> float | None:
    """CPU seconds used by every process of this ``ivr serve``: the supervisor and the workers
    it runs now (``own``: this process's, for a service without workers). Read from Linux's
    /proc; None where it cannot tell. A worker that died and was started again takes its CPU
    time with it, so the figure can fall: it is for a load test's two readings, not a total."""
    if worker.of == 1:
        return own
    supervisor = os.getppid()
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        pids = [supervisor, *(int(pid) for pid in children)]
        return sum(_process_cpu_seconds(pid) for pid in pids)
    except (OSError, ValueError, IndexError):
        return None


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (/proc/<pid>/stat fields 14 and 15), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_workers(text: str) -> int:
    """``--workers``: a whole number ≥ 1, or ``auto`` for :func:`usable_cores`. ValueError
    with the reason otherwise."""
    if text.strip().lower() == "auto":
        return usable_cores()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a number of worker processes ≥ 1 or 'auto', got {text!r}")
    return int(text)


# --------------------------------------------------------------------------- the port


def reserve_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """Bind (without listening) ``SO_REUSEPORT`` sockets on every address ``host`` names, on
    ``port`` (0: one the kernel picks, the same for all): the port the workers share, held
    while the sockets stay open. OSError when it is taken."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    held: list[socket.socket] = []
    try:
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server binds it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return port, held


# --------------------------------------------------------------------------- the worker's side


def announce_ready(fd: int) -> None:
    """Tell the supervisor this worker listens."""
    os.write(fd, READY)


def watch_supervisor(fd: int, loop: asyncio.AbstractEventLoop, gone: Callable[[], None]) -> None:
    """Call ``gone`` once the supervisor's end of the pair is closed (it exited or was killed).
    The supervisor never writes, so the descriptor becomes readable only at end-of-file."""

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.warning("the supervisor is gone; stopping")
            gone()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


# --------------------------------------------------------------------------- the supervisor


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead worker is started again (module docstring)."""

    stable_seconds: float = 30.0  # a run this long was not a crash at start
    first_delay: float = 1.0
    max_delay: float = 30.0
    give_up_after: int = 6  # quick deaths in a row of one worker: the supervisor exits 1

    def delay(self, quick_deaths: int) -> float:
        """The wait before a restart after ``quick_deaths`` quick deaths in a row (0: the
        worker had run for long)."""
        if quick_deaths == 0:
            return 0.0
        return float(min(self.max_delay, self.first_delay * 2 ** (quick_deaths - 1)))


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(eq=False)
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_deaths: int = 0
    # The supervisor's end of the pair: open while the worker lives (it stops at its end).
    link: asyncio.StreamWriter | None = None

    def unlink(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None


@dataclass(eq=False)
class Supervisor:
    """Runs ``count`` workers; ``command(index, fd)`` is worker ``index``'s argv, which must
    pass ``fd`` (its end of the socket pair) on as ``--supervisor-fd``."""

    command: Callable[[int, int], Sequence[str]]
    count: int
    policy: RestartPolicy = RestartPolicy()
    stop_timeout: float = STOP_TIMEOUT_SECONDS
    on_ready: Callable[[], None] = lambda: None  # every worker listens (the first time)
    clock: Callable[[], float] = time.monotonic
    slots: list[_Slot] = field(default_factory=list)
    failed: str | None = None  # why the supervisor gave up
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None]

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Start the workers, keep them up until :meth:`stop` (or giving up), stop them. The
        exit status: 0 when every worker stopped cleanly, 1 otherwise."""
        self.slots = [_Slot(i) for i in range(self.count)]
        watchers: list[asyncio.Task[None]] = []
        try:
            # Worker 0 alone first: it creates the vault and the prompt cache (docstring).
            started = await self._start(self.slots[0])
            if started:
                started = all(await asyncio.gather(*(self._start(s) for s in self.slots[1:])))
            if not started and not self._stop.is_set():
                self.failed = "a worker did not start"
            elif not self._stop.is_set():
                self.on_ready()
                watchers = [asyncio.create_task(self._keep_up(s)) for s in self.slots]
                await self._stop.wait()
        finally:
            self._stop.set()
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            clean = await self._stop_all()
        return 0 if clean and self.failed is None else 1

    async def _start(self, slot: _Slot) -> bool:
        """Start ``slot``'s worker and wait until it listens: False if it exited first, or
        the supervisor is told to stop meanwhile."""
        mine, theirs = socket.socketpair()
        try:
            argv = list(self.command(slot.index, theirs.fileno()))
            slot.process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), process_group=0
            )
            reader, slot.link = await asyncio.open_connection(sock=mine)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        slot.started = self.clock()
        log.info("worker %d (pid %d) starting", slot.index, slot.process.pid)
        heard = asyncio.create_task(reader.readline())
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait((heard, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not heard.done():
            heard.cancel()
            return False
        try:
            line = heard.result()
        except ConnectionError:
            line = b""
        if line == READY:
            log.info("worker %d (pid %d) listening", slot.index, slot.process.pid)
            return True
        code = await slot.process.wait()
        slot.unlink()
        log.error(
            "worker %d (pid %d) exited before it listened: %s",
            slot.index,
            slot.process.pid,
            describe_exit(code),
        )
        return False

    async def _keep_up(self, slot: _Slot) -> None:
        """Restart ``slot``'s worker whenever it exits (the policy), until the stop."""
        while True:
            assert slot.process is not None
            code = await slot.process.wait()
            slot.unlink()
            ran = self.clock() - slot.started
            slot.quick_deaths = slot.quick_deaths + 1 if ran < self.policy.stable_seconds else 0
            log.error(
                "worker %d (pid %d) exited unexpectedly after %.1f s: %s",
                slot.index,
                slot.process.pid,
                ran,
                describe_exit(code),
            )
            while True:
                if slot.quick_deaths >= self.policy.give_up_after:
                    self.failed = (
                        f"worker {slot.index} died {slot.quick_deaths} times in a row within "
                        f"{self.policy.stable_seconds:g} s of its start"
                    )
                    log.error("giving up: %s; stopping every worker", self.failed)
                    self._stop.set()
                    return
                delay = self.policy.delay(slot.quick_deaths)
                if delay:
                    log.warning("worker %d: restarting in %g s", slot.index, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    return
                if await self._start(slot):
                    break
                if self._stop.is_set():
                    return
                slot.quick_deaths += 1  # died before it listened: a quick death too

    async def _stop_all(self) -> bool:
        """SIGTERM to every live worker, SIGKILL to what is left after the timeout. Whether
        every worker exited with status 0."""
        live = [s for s in self.slots if s.process and s.process.returncode is None]
        for slot in live:
            assert slot.process is not None
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signal.SIGTERM)
        clean = True
        if live:
            waits = [asyncio.create_task(s.process.wait()) for s in live if s.process]
            _, pending = await asyncio.wait(waits, timeout=self.stop_timeout)
            for slot in live:
                assert slot.process is not None
                if slot.process.returncode is None:
                    log.error(
                        "worker %d (pid %d) did not stop within %g s: killed",
                        slot.index,
                        slot.process.pid,
                        self.stop_timeout,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
            for task in pending:
                await task
        for slot in live:
            assert slot.process is not None and slot.process.returncode is not None
            code = slot.process.returncode
            log.log(
                logging.INFO if code == 0 else logging.ERROR,
                "worker %d (pid %d) stopped: %s",
                slot.index,
                slot.process.pid,
                describe_exit(code),
            )
            clean = clean and code == 0
        for slot in self.slots:
            slot.unlink()
        return clean


def supervise(
    command: Callable[[int, int], Sequence[str]],
    count: int,
    *,
    on_ready: Callable[[], None] = lambda: None,
    policy: RestartPolicy = RestartPolicy(),
) -> int:
    """Run the supervisor until SIGTERM or SIGINT; its exit status."""

    async def main() -> int:
        supervisor = Supervisor(command, count, policy=policy, on_ready=on_ready)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.stop)
        return await supervisor.run()

    return asyncio.run(main())
