"""The consent flow, driven by events only: each mode's path, and invariants over random calls."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.consent import (
    RECORDING_DECISIONS,
    CallEnded,
    CallStarted,
    ConsentFlow,
    ConsentProtocolError,
    Decision,
    DigitPressed,
    FlowPolicy,
    HandOff,
    HangUp,
    PlayPrompt,
    PromptFinished,
    PromptInfo,
    StartRecording,
    State,
    StopPrompt,
    StopRecording,
    Tick,
)
from ivr.policy import (
    ALLOWED_MODES,
    DISCARD_ON_WITHDRAW_DEFAULT,
    WITHDRAWABLE,
    ConsentMode,
    LawfulBasis,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PROMPT_IDS = (
    "consent_request",
    "objection_notice",
    "notice_only",
    "recording_started",
    "not_recording",
    "recording_stopped",
    "invalid_key",
    "recording_limit",
)
PROMPTS = {p: PromptInfo(p, f"text of {p}", f"{i:064x}", 3000) for i, p in enumerate(PROMPT_IDS)}


def policy(mode: ConsentMode, basis: LawfulBasis | None = None, **kw) -> FlowPolicy:
    basis = basis or next(b for b, modes in ALLOWED_MODES.items() if modes[0] is mode)
    fields = dict(
        policy_id="acme-quality",
        policy_version=2,
        lawful_basis=basis,
        consent_mode=mode,
        purpose="quality",
        language="en",
        withdrawable=WITHDRAWABLE[basis],
        discard_on_withdraw=DISCARD_ON_WITHDRAW_DEFAULT[basis],
        max_recording_seconds=600,
    )
    fields.update(kw)
    return FlowPolicy(**fields)


def flow(mode: ConsentMode, **kw) -> ConsentFlow:
    return ConsentFlow(policy(mode, **kw), PROMPTS, T0)


def kinds(commands) -> list[str]:
    return [type(c).__name__ for c in commands]


def started(f: ConsentFlow) -> PlayPrompt:
    (play,) = f.handle(CallStarted(at=0))
    assert isinstance(play, PlayPrompt)
    return play


# -- opt_in ---------------------------------------------------------------------------------------
def test_opt_in_accept_after_the_question():
    f = flow(ConsentMode.OPT_IN)
    play = started(f)
    assert play.prompt_id == "consent_request"
    assert f.handle(PromptFinished(at=6.0, play_id=play.play_id)) == []
    assert f.state is State.AWAITING_KEY and f.deadline == 14.0
    out = f.handle(DigitPressed(at=7.5, digit="1"))
    assert kinds(out) == ["StartRecording", "PlayPrompt"]
    assert out[1].prompt_id == "recording_started"
    ev = out[0].evidence
    assert ev["decision"] == "accepted" and ev["key_pressed"] == "1"
    assert ev["key_pressed_at"] == "2026-11-28T12:00:07.500000Z"
    assert ev["prompt_started_at"] == "2026-11-28T12:00:00.000000Z"
    assert ev["prompt_ended_at"] == "2026-11-28T12:00:06.000000Z"
    assert ev["prompt_played_in_full"] is True
    assert ev["prompt_text"] == "text of consent_request"
    assert ev["prompt_sha256"] == PROMPTS["consent_request"].sha256
    assert ev["policy_id"] == "acme-quality" and ev["policy_version"] == 2
    assert f.handle(PromptFinished(at=9, play_id=out[1].play_id)) == [HandOff(recording=True)]


def test_opt_in_barge_in_stops_the_prompt():
    f = flow(ConsentMode.OPT_IN)
    started(f)
    out = f.handle(DigitPressed(at=2.5, digit="1"))
    assert kinds(out) == ["StopPrompt", "StartRecording", "PlayPrompt"]
    assert out[1].evidence["prompt_played_in_full"] is False
    assert out[1].evidence["prompt_ended_at"] == "2026-11-28T12:00:02.500000Z"


@pytest.mark.parametrize("key", ["9", "*"])
def test_opt_in_decline(key):
    f = flow(ConsentMode.OPT_IN)
    play = started(f)
    f.handle(PromptFinished(at=6, play_id=play.play_id))
    out = f.handle(DigitPressed(at=7, digit=key))
    assert kinds(out) == ["PlayPrompt"] and out[0].prompt_id == "not_recording"
    assert f.decision is Decision.DECLINED and not f.recording
    assert f.handle(PromptFinished(at=9, play_id=out[0].play_id)) == [HandOff(recording=False)]


def test_opt_in_silence_is_a_refusal():
    f = flow(ConsentMode.OPT_IN)
    play = started(f)
    f.handle(PromptFinished(at=6, play_id=play.play_id))
    assert f.handle(Tick(at=13.9)) == []
    out = f.handle(Tick(at=14))
    assert kinds(out) == ["PlayPrompt"] and f.decision is Decision.NO_RESPONSE


def test_opt_in_invalid_keys_reprompt_then_refuse():
    f = flow(ConsentMode.OPT_IN)
    play = started(f)
    out = f.handle(DigitPressed(at=1, digit="5"))
    assert kinds(out) == ["StopPrompt", "PlayPrompt"] and out[1].prompt_id == "invalid_key"
    out = f.handle(PromptFinished(at=2, play_id=out[1].play_id))
    assert out[0].prompt_id == "consent_request"
    # A mark for the first, interrupted play arriving late changes nothing.
    assert f.handle(PromptFinished(at=2.1, play_id=play.play_id)) == []
    f.handle(DigitPressed(at=3, digit="5"))
    out = f.handle(DigitPressed(at=4, digit="7"))
    assert f.decision is Decision.NO_RESPONSE and out[-1].prompt_id == "not_recording"


def test_opt_in_hang_up_during_the_prompt():
    f = flow(ConsentMode.OPT_IN)
    started(f)
    assert f.handle(CallEnded(at=3)) == []
    assert f.decision is Decision.HUNG_UP and f.state is State.ENDED
    assert f.handle(CallEnded(at=4)) == []  # a second hang-up event is harmless


def test_withdrawal_discards_for_consent():
    f = flow(ConsentMode.OPT_IN, stays_on_stream=True)
    started(f)
    out = f.handle(DigitPressed(at=1, digit="1"))
    assert f.handle(PromptFinished(at=3, play_id=out[-1].play_id)) == []  # stays to record
    out = f.handle(DigitPressed(at=30, digit="*"))
    assert kinds(out) == ["StopRecording", "PlayPrompt"]
    assert out[0].discard is True and out[0].evidence["withdrawn_at"]
    assert f.handle(PromptFinished(at=33, play_id=out[1].play_id)) == [HandOff(recording=False)]
    assert f.decision is Decision.ACCEPTED  # the decision stands; the withdrawal is recorded


def test_withdrawal_keeps_what_was_recorded_when_the_policy_says_so():
    f = flow(ConsentMode.OPT_IN, discard_on_withdraw=False)
    started(f)
    f.handle(DigitPressed(at=1, digit="1"))
    out = f.handle(DigitPressed(at=20, digit="*"))
    assert kinds(out) == ["StopPrompt", "StopRecording", "PlayPrompt"]
    assert out[1].discard is False


def test_recording_limit_stops_and_hangs_up():
    f = flow(ConsentMode.OPT_IN, stays_on_stream=True, max_recording_seconds=60)
    started(f)
    out = f.handle(DigitPressed(at=1, digit="1"))
    f.handle(PromptFinished(at=3, play_id=out[-1].play_id))
    out = f.handle(Tick(at=61))
    assert kinds(out) == ["StopRecording", "PlayPrompt"] and out[0].discard is False
    assert f.handle(PromptFinished(at=64, play_id=out[1].play_id)) == [
        HangUp("recording limit reached")
    ]


# -- opt_out, notice, none ------------------------------------------------------------------------
def test_opt_out_records_when_the_notice_ends():
    f = flow(ConsentMode.OPT_OUT)
    play = started(f)
    assert play.prompt_id == "objection_notice"
    out = f.handle(PromptFinished(at=7, play_id=play.play_id))
    assert kinds(out) == ["StartRecording", "HandOff"]
    assert f.decision is Decision.NOT_OBJECTED


def test_opt_out_objection_during_the_notice():
    f = flow(ConsentMode.OPT_OUT)
    started(f)
    out = f.handle(DigitPressed(at=3, digit="9"))
    assert kinds(out) == ["StopPrompt", "PlayPrompt"] and f.decision is Decision.OBJECTED


def test_notice_has_no_refusal_key():
    f = flow(ConsentMode.NOTICE, basis=LawfulBasis.CONTRACT)
    play = started(f)
    assert f.handle(DigitPressed(at=1, digit="9")) == []
    assert kinds(f.handle(PromptFinished(at=5, play_id=play.play_id))) == [
        "StartRecording",
        "HandOff",
    ]
    assert f.decision is Decision.NOTIFIED
    assert f.handle(DigitPressed(at=9, digit="*")) == []  # contract: not withdrawable


def test_none_mode_records_at_once():
    f = flow(ConsentMode.NONE, basis=LawfulBasis.VITAL_INTERESTS)
    assert kinds(f.handle(CallStarted(at=0))) == ["StartRecording", "HandOff"]
    assert f.decision is Decision.NOT_ASKED


# -- the driver's mistakes ------------------------------------------------------------------------
def test_a_call_can_end_before_the_flow_starts():
    f = flow(ConsentMode.OPT_IN)
    assert f.handle(CallEnded(at=0)) == []
    assert f.decision is Decision.HUNG_UP and f.state is State.ENDED


def test_protocol_errors_are_local_and_sticky():
    f = flow(ConsentMode.OPT_IN)
    with pytest.raises(ConsentProtocolError, match="before CallStarted"):
        f.handle(DigitPressed(at=0, digit="1"))
    with pytest.raises(ConsentProtocolError):
        f.handle(CallStarted(at=0))
    g = flow(ConsentMode.OPT_IN)
    started(g)
    g.handle(Tick(at=5))
    with pytest.raises(ConsentProtocolError, match="backwards"):
        g.handle(Tick(at=4))


def test_events_validate_their_fields():
    with pytest.raises(ValueError):
        DigitPressed(at=0, digit="x")
    with pytest.raises(ValueError):
        Tick(at=-1)
    with pytest.raises(ConsentProtocolError, match="prompts missing"):
        ConsentFlow(policy(ConsentMode.OPT_IN), {}, T0)


# -- invariants over random calls -----------------------------------------------------------------
MODES = [
    (ConsentMode.OPT_IN, LawfulBasis.CONSENT),
    (ConsentMode.OPT_OUT, LawfulBasis.LEGITIMATE_INTERESTS),
    (ConsentMode.OPT_OUT, LawfulBasis.PUBLIC_TASK),
    (ConsentMode.NOTICE, LawfulBasis.CONTRACT),
    (ConsentMode.NOTICE, LawfulBasis.VITAL_INTERESTS),
    (ConsentMode.NONE, LawfulBasis.VITAL_INTERESTS),
]

steps = st.lists(
    st.tuples(
        st.sampled_from(["finish", "finish_stale", "digit", "tick", "end"]),
        st.floats(0, 20, allow_nan=False),
        st.sampled_from(sorted("0123456789*#")),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    stays=st.booleans(),
    discard=st.booleans(),
    script=steps,
)
def test_random_calls_keep_the_lawful_invariants(mode, stays, discard, script):
    consent_mode, basis = mode
    f = ConsentFlow(
        policy(
            consent_mode,
            basis,
            stays_on_stream=stays,
            discard_on_withdraw=discard,
            max_recording_seconds=60,
        ),
        PROMPTS,
        T0,
    )
    now = 0.0
    recording = False  # what a writer driven by these commands would be doing
    first_prompt_done = False
    accept_pressed = objected = False
    decisions: list[Decision] = []
    playing: PlayPrompt | None = None
    handoffs = 0

    def apply(commands):
        nonlocal recording, playing, handoffs
        for c in commands:
            if isinstance(c, StartRecording):
                assert not recording
                # The lawful condition holds at the moment recording starts.
                if consent_mode is ConsentMode.OPT_IN:
                    assert accept_pressed and f.decision is Decision.ACCEPTED
                elif consent_mode is ConsentMode.OPT_OUT:
                    assert first_prompt_done and not objected
                elif consent_mode is ConsentMode.NOTICE:
                    assert first_prompt_done
                assert c.evidence["decision"] in {d.value for d in RECORDING_DECISIONS}
                recording = True
            elif isinstance(c, StopRecording):
                assert recording
                recording = False
            elif isinstance(c, PlayPrompt):
                playing = c
            elif isinstance(c, StopPrompt):
                playing = None
            elif isinstance(c, HandOff):
                handoffs += 1
                assert c.recording == recording
        if f.decision is not None and (not decisions or decisions[-1] != f.decision):
            decisions.append(f.decision)

    apply(f.handle(CallStarted(at=0)))
    for action, dt, digit in script:
        now += dt
        if f.state is State.ENDED:
            break
        was_recording = recording
        if action == "finish" and playing is not None:
            if playing.prompt_id in ("consent_request", "objection_notice", "notice_only"):
                first_prompt_done = True
            current, playing = playing, None
            apply(f.handle(PromptFinished(at=now, play_id=current.play_id)))
        elif action == "finish_stale":
            apply(f.handle(PromptFinished(at=now, play_id=10_000)))
        elif action == "digit":
            if f.decision is None and f.policy.consent_mode is ConsentMode.OPT_IN:
                accept_pressed = accept_pressed or digit == "1"
            if f.decision is None and f.policy.consent_mode is ConsentMode.OPT_OUT:
                objected = objected or digit in "9*"
            out = f.handle(DigitPressed(at=now, digit=digit))
            apply(out)
            if was_recording and digit == "*" and f.policy.withdrawable:
                stops = [c for c in out if isinstance(c, StopRecording)]
                assert stops and stops[0].discard is discard  # withdrawal per policy
        elif action == "tick":
            apply(f.handle(Tick(at=now)))
        elif action == "end":
            apply(f.handle(CallEnded(at=now)))
    if f.state is not State.ENDED:
        apply(f.handle(CallEnded(at=now + 1)))
    assert len(decisions) == 1  # exactly one decision, never changed
    assert not recording  # every recording was stopped by the end of the call
    assert handoffs <= 1
    assert f.evidence()["decision"] == decisions[0].value


def test_docs_print_the_transition_table():
    from pathlib import Path

    from ivr.consent import transition_table

    doc = (Path(__file__).parent.parent / "docs" / "consent-flow.md").read_text()
    doc = doc.split("## Transitions")[1].split("## Decisions")[0]
    rows = [
        tuple(cell.strip().strip("`") for cell in line.strip("|").split("|"))
        for line in doc.splitlines()
        if line.startswith("| `")
    ]
    assert rows == [tuple(r) for r in transition_table()]
