"""Every consent mode over real SIP calls through a real Asterisk 22.

The calls of this module run at the same time against one Asterisk and one ``ivr serve`` (a
busy PBX, and about 30 s of wall time instead of several minutes); each test then checks one
call: the decision and why the call ended (the catalog), what the caller heard (the prompts,
bit-exact), what was recorded (the caller's own frames, bit-exact, in order, without a gap,
from the lawful moment to the end), and that Asterisk holds nothing of it afterwards.

Keys are pressed after an observed event (so much of the prompt heard), both as SIP INFO and
as RFC 4733 events; none of the tests waits a guessed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.asterisk.checks import (
    Heard,
    assert_heard,
    assert_only_parties,
    find_in_recording,
)
from tests.asterisk.conftest import Phones
from tests.asterisk.driver import Driver
from tests.asterisk.pbx import Asterisk, build
from tests.asterisk.service import (
    CALLER,
    CONSENT_LINE,
    EMERGENCY_LINE,
    MESSAGE_LINE,
    NOTICE_LINE,
    OBJECTION_LINE,
    REPORT_LINE,
    Service,
)

# How far the recording's edges may sit from the moments the caller's side saw: a frame in
# flight while the key travels by SIP and ARI, or while the BYE does.
EARLY = 0.2  # s: frames sent this long before the lawful moment may be in the recording
LATE = 0.6  # s: the recording reaches to within this of the moment it should have ended


@dataclass(frozen=True)
class Expect:
    decision: str
    recording: str | None  # the recording's status, or None: nothing recorded
    ended_by: str  # "local": the caller hung up; "remote": the service did
    end_reason: str  # how the call row starts its end_reason
    heard: tuple[Heard, ...]
    lawful_from: str | None = None  # the mark from which recording was lawful
    recorded_until: str | None = "hang_up"  # the mark where the recording ends


@dataclass(frozen=True)
class Scenario:
    name: str
    line: str
    language: str
    script: Callable[[Driver], Awaitable[None]]
    expect: Expect


async def accept_then_talk(d: Driver) -> None:
    await d.hear(1000)
    d.press("1", "info")
    before = d.heard_ms()
    await d.hear_prompt("recording_started", after=before)
    await d.talk(2.0)
    d.hang_up()


async def accept_rfc4733_then_withdraw(d: Driver) -> None:
    await d.hear(800)
    d.press("1", "rfc4733")
    before = d.heard_ms()
    await d.hear_prompt("recording_started", after=before)
    await d.talk(1.5)
    d.marks["withdraw"] = time.monotonic()
    d.call.press_rfc4733("*")
    before = d.heard_ms()
    await d.hear_prompt("recording_stopped", after=before)
    await d.talk(0.5)
    d.hang_up()


async def decline(d: Driver) -> None:
    await d.hear(1000)
    d.press("9", "rfc4733")
    before = d.heard_ms()
    await d.hear_prompt("not_recording", after=before)
    await d.talk(0.5)
    d.hang_up()


async def stay_silent(d: Driver) -> None:
    # The whole question, then the timeout, then "not recording".
    await d.hear_prompt("consent_request", after=0)
    await d.hear_prompt("not_recording", after=d.heard_ms())
    await d.talk(0.5)
    d.hang_up()


async def object_during_notice(d: Driver) -> None:
    await d.hear(1500)
    d.press("9", "info")
    before = d.heard_ms()
    await d.hear_prompt("not_recording", after=before)
    await d.talk(0.5)
    d.hang_up()


async def let_notice_play(d: Driver, notice: str) -> None:
    await d.hear_prompt(notice, after=0)
    d.marks["lawful"] = d.last_prompt_frame_at()
    await d.talk(2.0)
    d.hang_up()


async def notice_then_withdraw(d: Driver) -> None:
    await d.hear_prompt("objection_notice", after=0)
    d.marks["lawful"] = d.last_prompt_frame_at()
    await d.talk(1.5)
    d.marks["withdraw"] = time.monotonic()
    d.call.press_info("*")
    await d.hear_prompt("recording_stopped", after=d.heard_ms())
    await d.talk(0.5)
    d.hang_up()


async def talk_at_once(d: Driver) -> None:
    d.marks["lawful"] = d.call.answered_at or time.monotonic()
    await d.talk(2.5)
    d.hang_up()


async def hang_up_mid_prompt(d: Driver) -> None:
    await d.hear(1200)
    d.hang_up()


async def decline_on_message_line(d: Driver) -> None:
    """A message line whose caller refuses: nothing to record, so the service hangs up."""
    await d.hear(1000)
    d.press("9", "info")
    await d.call.wait_ended()


SCENARIOS = [
    Scenario(
        "opt_in accept (SIP INFO), forwarded",
        CONSENT_LINE,
        "en",
        accept_then_talk,
        Expect(
            "accepted",
            "complete",
            "local",
            "caller hung up",
            (Heard("consent_request", False, 1000), Heard("recording_started", True)),
            lawful_from="key",
        ),
    ),
    Scenario(
        "opt_in accept then withdraw (RFC 4733): discarded",
        CONSENT_LINE,
        "en",
        accept_rfc4733_then_withdraw,
        Expect(
            "accepted",
            "discarded",
            "local",
            "caller hung up",
            (
                Heard("consent_request", False, 800),
                Heard("recording_started", True),
                Heard("recording_stopped", True, mixed=True),
            ),
        ),
    ),
    Scenario(
        "opt_in decline (RFC 4733)",
        CONSENT_LINE,
        "en",
        decline,
        Expect(
            "declined",
            None,
            "local",
            "caller hung up",
            (Heard("consent_request", False, 1000), Heard("not_recording", True)),
        ),
    ),
    Scenario(
        "opt_in silence is a refusal",
        CONSENT_LINE,
        "en",
        stay_silent,
        Expect(
            "no_response",
            None,
            "local",
            "caller hung up",
            (Heard("consent_request", True), Heard("not_recording", True)),
        ),
    ),
    Scenario(
        "opt_out objection (SIP INFO)",
        OBJECTION_LINE,
        "en",
        object_during_notice,
        Expect(
            "objected",
            None,
            "local",
            "caller hung up",
            (Heard("objection_notice", False, 1500), Heard("not_recording", True)),
        ),
    ),
    Scenario(
        "opt_out without objection is recorded",
        OBJECTION_LINE,
        "en",
        lambda d: let_notice_play(d, "objection_notice"),
        Expect(
            "not_objected",
            "complete",
            "local",
            "caller hung up",
            (Heard("objection_notice", True),),
            lawful_from="lawful",
        ),
    ),
    Scenario(
        "opt_out then withdraw (SIP INFO): discarded",
        OBJECTION_LINE,
        "en",
        notice_then_withdraw,
        Expect(
            "not_objected",
            "discarded",  # the default for legitimate interests, as for consent
            "local",
            "caller hung up",
            (Heard("objection_notice", True), Heard("recording_stopped", True, mixed=True)),
        ),
    ),
    Scenario(
        "notice",
        NOTICE_LINE,
        "en",
        lambda d: let_notice_play(d, "notice_only"),
        Expect(
            "notified",
            "complete",
            "local",
            "caller hung up",
            (Heard("notice_only", True),),
            lawful_from="lawful",
        ),
    ),
    Scenario(
        "none (vital interests): recorded at once",
        EMERGENCY_LINE,
        "en",
        talk_at_once,
        Expect("not_asked", "complete", "local", "caller hung up", (), lawful_from="lawful"),
    ),
    Scenario(
        "message line (sv): accept, recorded until the caller hangs up",
        MESSAGE_LINE,
        "sv",
        accept_then_talk,
        Expect(
            "accepted",
            "complete",
            "local",
            "caller hung up",
            (Heard("consent_request", False, 1000), Heard("recording_started", True)),
            lawful_from="key",
        ),
    ),
    Scenario(
        "message line (sv): decline, the service hangs up",
        MESSAGE_LINE,
        "sv",
        decline_on_message_line,
        Expect(
            "declined",
            None,
            "remote",
            "service hung up",
            (Heard("consent_request", False, 1000), Heard("not_recording", True)),
        ),
    ),
    Scenario(
        "report line (sv, opt_out): objection",
        REPORT_LINE,
        "sv",
        object_during_notice,
        Expect(
            "objected",
            None,
            "remote",
            "service hung up",
            (Heard("objection_notice", False, 1500), Heard("not_recording", True)),
        ),
    ),
    Scenario(
        "hang-up during the prompt",
        CONSENT_LINE,
        "en",
        hang_up_mid_prompt,
        Expect(
            "hung_up",
            None,
            "local",
            "caller hung up",
            (Heard("consent_request", False, 1200),),
        ),
    ),
]


@dataclass
class Outcome:
    driver: Driver
    ended_by: str
    call_row: Any
    recording_row: Any
    frames: list[bytes] | None


@dataclass
class Matrix:
    outcomes: dict[str, Outcome]
    leftovers: tuple[list[str], list[str]]
    service_log: str
    pbx_log: str


def caller_number(i: int) -> str:
    return f"{CALLER[:-2]}{i:02d}"


async def _run(pbx: Asterisk, service: Service, root: Path) -> Matrix:
    phones = Phones(pbx, root)
    drivers: dict[str, Driver] = {}
    ended: dict[str, str] = {}
    try:
        await phones.agents(calls=None)  # the pool that answers forwarded calls

        async def one(i: int, sc: Scenario) -> None:
            call = await phones.dial(sc.line, caller_number(i), name=f"s{i:02d}")
            driver = drivers[sc.name] = Driver(call, sc.line)
            await call.wait_answered()
            await sc.script(driver)
            ended[sc.name] = await call.wait_ended()

        results = await asyncio.gather(
            *(one(i, sc) for i, sc in enumerate(SCENARIOS)), return_exceptions=True
        )
        errors = [(sc.name, r) for sc, r in zip(SCENARIOS, results, strict=True) if r]
        if errors:
            raise AssertionError(f"calls failed: {errors}\n{service.log_tail(80)}")
        service.until(lambda: service.calls_in_progress() == 0, "every call to end")
        calls = service.call_rows()
        recordings = service.recording_rows()
        vault_rows = {}
        with contextlib.closing(service.vault()) as vault:
            for i, sc in enumerate(SCENARIOS):
                h = vault.caller_hash("demo", caller_number(i))
                vault_rows[sc.name] = next(r for r in calls.values() if r["caller_hash"] == h)
        outcomes = {}
        for sc in SCENARIOS:
            row = vault_rows[sc.name]
            rec = recordings.get(row["id"])
            frames = (
                service.frames(rec["id"])
                if rec is not None and rec["status"] in ("complete", "incomplete")
                else None
            )
            outcomes[sc.name] = Outcome(drivers[sc.name], ended[sc.name], row, rec, frames)
        leftovers = await _settled_leftovers(pbx)
        return Matrix(outcomes, leftovers, service.log_text(), pbx.tail_log(200))
    finally:
        await phones.close()


async def _settled_leftovers(pbx: Asterisk, timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """What Asterisk still holds once hang-ups have run their course (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        left = pbx.leftovers()
        if left == ([], []) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    root = tmp_path_factory.mktemp("consent-modes")
    pbx = Asterisk(build())
    pbx.start()
    service = Service(pbx, root)
    try:
        service.start()
        yield asyncio.run(_run(pbx, service, root))
    finally:
        service.close()
        pbx.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_call(matrix: Matrix, scenario: Scenario) -> None:
    out = matrix.outcomes[scenario.name]
    want = scenario.expect
    d = out.driver
    # Who hung up, and the catalog's account of it.
    assert out.ended_by == want.ended_by
    assert out.call_row["outcome"] == want.decision, dict(out.call_row)
    assert out.call_row["ended_at"]
    assert out.call_row["end_reason"].startswith(want.end_reason), out.call_row["end_reason"]
    # What the caller heard: the prompts, bit-exact, and nothing else.
    assert_heard(d.call.rtp.received, scenario.line, want.heard)
    # What was recorded.
    rec = out.recording_row
    if want.recording is None:
        assert rec is None, dict(rec)
        return
    assert rec is not None and rec["status"] == want.recording, rec and dict(rec)
    assert json.loads(rec["tracks"]) == ["mixed"]
    if want.recording != "complete":
        assert out.frames is None
        return
    assert out.frames is not None
    assert_only_parties(out.frames, d.call.rtp.sent)
    span = find_in_recording(out.frames, d.call.rtp)
    assert span is not None, "none of the caller's audio was recorded"
    if want.lawful_from is not None:
        lawful = d.marks[want.lawful_from]
        assert span.first.at >= lawful - EARLY, (
            f"recorded from {lawful - span.first.at:.3f} s before the lawful moment"
        )
        assert span.first.at <= lawful + LATE, (
            f"recording began {span.first.at - lawful:.3f} s after the lawful moment"
        )
    if want.recorded_until is not None:
        end = d.marks[want.recorded_until]
        assert span.last.at >= end - LATE, f"recording stopped {end - span.last.at:.3f} s early"
        assert span.last.at <= end + EARLY, f"recorded {span.last.at - end:.3f} s too long"


def test_asterisk_holds_nothing_afterwards(matrix: Matrix) -> None:
    assert matrix.leftovers == ([], []), matrix.leftovers


def test_no_set_up_failed(matrix: Matrix) -> None:
    assert "set-up failed" not in matrix.service_log
    assert "Channel not in Stasis application" not in matrix.service_log
