"""A worker of ``ivr serve --workers 3`` killed in the middle of calls (docs/cluster.md, "What a
dead process leaves"): the calls the others hold finish as usual; the dead worker's recordings
are finished as ``incomplete`` by a living worker within the recovery interval, every sealed
chunk kept and decryptable; its calls' rows are closed; nothing is left ``recording``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from ivr.calls.registry import DEAD_HOLDER_REASON, ORPHAN_REASON
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.app import HOLDER_GONE
from storage.catalog import RecordingStatus
from storage.vault import Vault
from tests.test_twilio_e2e import MESSAGE_LINE
from tests.test_workers import DEADLINE, healthz, logged_port, service

CALLS = 24
CALL_SECONDS = 20.0  # real time: the kill lands while the calls are recording
# The kill waits for this many recordings two seconds along (not all: on a loaded machine a
# call may start late, and the test must not wait for the slowest).
RECORDING_BEFORE_KILL = CALLS * 3 // 4
PRESS_AT = 4.0


async def test_a_killed_worker_loses_only_its_own_calls_and_its_recordings_are_kept(tmp_path):
    with service(tmp_path, "--workers", "3") as (proc, log):
        port = logged_port(proc, log, r"listening on http://127\.0\.0\.1:(\d+) \(3 workers\)")
        url = f"http://127.0.0.1:{port}"
        pids = [int(p) for p in re.findall(r"worker \d \(pid (\d+)\) listening", log.read_text())]
        # The key a few seconds in: on a loaded machine the stream may open a second or more
        # after the call, and a key pressed before it is not delivered (nor recorded).
        options = CallOptions(
            url=url, to=MESSAGE_LINE, presses=[(PRESS_AT, "1")], hangup_at=CALL_SECONDS
        )
        calls = asyncio.gather(*(simulate_call(options) for _ in range(CALLS)))

        def recording_a_while() -> int:
            """Recordings with two seconds of audio sealed (a second's chunk is 8,000 bytes
            of sealed audio and a little more), so that a dead writer leaves something."""
            parts = (tmp_path / "var" / "blobs").rglob("*.rec.part")
            return sum(1 for part in parts if part.stat().st_size > 2 * 8000)

        deadline = time.monotonic() + DEADLINE
        while (recording := await asyncio.to_thread(recording_a_while)) < RECORDING_BEFORE_KILL:
            assert time.monotonic() < deadline, f"only {recording} calls recording"
            await asyncio.sleep(0.1)
        victim = pids[1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        results = await calls

        # Every call its holder survived is whole; the others lost their line to the dead one.
        whole = [r for r in results if r.error is None and r.recording_status == "complete"]
        assert whole, [r.error for r in results]
        assert not [r.error for r in results if r.error and "status callback" in r.error]
        for r in whole:
            assert r.decision == "accepted" and r.status_response["frames_lost"] == 0

        # Within the recovery interval (10 s; bounded here by the test's deadline), a living
        # worker finishes what the dead one left.
        def left_open() -> tuple[list[str], list[str]]:
            """The dead worker's calls still open, and recordings still being written (the
            calls are over: the living workers closed theirs when their streams stopped). A
            living worker's call row may stay open a while: its status callback may have been
            lost with the dead worker's connection, and the holder expires it later."""
            with Vault(tmp_path / "var", fsync=False, recover=False) as vault:
                rows = vault.catalog.open_calls_held()
                dead = [r["id"] for r in rows if not vault.writer_alive(r["owner"])]
                recording = [r.id for r in vault.list(status=RecordingStatus.RECORDING)]
            return dead, recording

        deadline = time.monotonic() + DEADLINE
        while (left := await asyncio.to_thread(left_open)) != ([], []):
            assert time.monotonic() < deadline, f"never finished: {left}"
            await asyncio.sleep(0.2)
        recovered_within = time.monotonic() - killed_at

        with Vault(tmp_path / "var", fsync=False, recover=False) as vault:
            # Closed by whoever came first: a living worker's recovery round, the status
            # callback landing on a living worker, or the restarted worker's start.
            closed = vault.catalog.query(
                "SELECT id, end_reason FROM calls WHERE outcome = ?", ("interrupted",)
            )
            for c in closed:
                reason = c["end_reason"]
                assert reason in (DEAD_HOLDER_REASON, ORPHAN_REASON) or reason.endswith(
                    HOLDER_GONE
                ), reason
            rows = vault.list()
            incomplete = [r for r in rows if r.status is RecordingStatus.INCOMPLETE]
            assert closed and incomplete  # the dead worker held some of the calls
            assert {r.call_id for r in incomplete} <= {c["id"] for c in closed}
            for row in incomplete:
                assert row.chunk_count and row.chunk_count >= 1
                with vault.open_reader(row.id) as reader:
                    assert sum(1 for _ in reader.frames()) >= 50  # a chunk's worth, at least
            assert not [r for r in rows if r.status is RecordingStatus.RECORDING]
        assert recovered_within < DEADLINE
        assert len(whole) + len(incomplete) <= CALLS
        # The service carries on: the supervisor restarted the worker, and calls still work.
        assert healthz(port) is not None
        after = await simulate_call(CallOptions(url=url, fast=True, presses=[(1.0, "1")]))
        assert after.error is None and after.recording_status == "complete"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()
