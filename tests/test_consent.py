"""The consent flow, driven by events only: each mode's path, and invariants over random calls."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ivr.consent
from ivr.capabilities import WithdrawChannel
from ivr.consent import (
    RECORDING_DECISIONS,
    RECORDING_STATES,
    TRANSITIONS,
    CallEnded,
    CallStarted,
    ConsentEvidence,
    ConsentFlow,
    ConsentProtocolError,
    Decision,
    DigitPressed,
    Event,
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
    Transition,
    WithdrawalRequested,
    state_diagram,
    transition_table,
)
from ivr.policy import (
    ALLOWED_MODES,
    DISCARD_ON_WITHDRAW_DEFAULT,
    WITHDRAWABLE,
    ConsentMode,
    LawfulBasis,
)

DOC = Path(__file__).parent.parent / "docs" / "consent-flow.md"

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
        withdraw=WithdrawChannel.KEYS if WITHDRAWABLE[basis] else WithdrawChannel.NONE,
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
        HangUp(reason="recording limit reached")
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
        assert f.recording == (f.state in RECORDING_STATES)
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

    def step(event: Event) -> list:
        before = f.state
        out = f.handle(event)
        if f.state is not before:  # a step the table declares, and no other
            assert f.state in TRANSITIONS[(before, type(event))].targets
        return out

    apply(step(CallStarted(at=0)))
    for action, dt, digit in script:
        now += dt
        if f.state is State.ENDED:
            break
        was_recording = recording
        if action == "finish" and playing is not None:
            if playing.prompt_id in ("consent_request", "objection_notice", "notice_only"):
                first_prompt_done = True
            current, playing = playing, None
            apply(step(PromptFinished(at=now, play_id=current.play_id)))
        elif action == "finish_stale":
            apply(step(PromptFinished(at=now, play_id=10_000)))
        elif action == "digit":
            if f.decision is None and f.policy.consent_mode is ConsentMode.OPT_IN:
                accept_pressed = accept_pressed or digit == "1"
            if f.decision is None and f.policy.consent_mode is ConsentMode.OPT_OUT:
                objected = objected or digit in "9*"
            out = step(DigitPressed(at=now, digit=digit))
            apply(out)
            if was_recording and digit == "*" and f.policy.withdrawable:
                stops = [c for c in out if isinstance(c, StopRecording)]
                assert stops and stops[0].discard is discard  # withdrawal per policy
        elif action == "tick":
            apply(step(Tick(at=now)))
        elif action == "end":
            apply(step(CallEnded(at=now)))
    if f.state is not State.ENDED:
        apply(step(CallEnded(at=now + 1)))
    assert len(decisions) == 1  # exactly one decision, never changed
    assert not recording  # every recording was stopped by the end of the call
    assert handoffs <= 1
    assert f.evidence()["decision"] == decisions[0].value


# -- the table ------------------------------------------------------------------------------------
def _random_call(rng: random.Random) -> list[tuple[State, Event, State]]:
    """One random call on a random line: every step it took, as (state, event, next state)."""
    mode, basis = rng.choice(MODES)
    f = ConsentFlow(
        policy(
            mode,
            basis,
            stays_on_stream=rng.random() < 0.5,
            discard_on_withdraw=rng.random() < 0.5,
            max_recording_seconds=rng.choice([1, 60]),  # 1: the limit while recording_started plays
            plays_after_hand_off=rng.random() < 0.5,
        ),
        PROMPTS,
        T0,
    )
    now, plays, steps = 0.0, [0], []
    if rng.random() < 0.02:  # the caller left before the flow began
        f.handle(CallEnded(at=0))
        return [(State.IDLE, CallEnded(at=0), f.state)]
    events: list[Event] = [CallStarted(at=0)]
    for _ in range(rng.randint(0, 30)):
        now += rng.choice([0, 0.5, 1, 3, 20, 70])
        kind = rng.random()
        if kind < 0.35:
            events.append(PromptFinished(at=now, play_id=rng.choice([plays[-1], *plays])))
        elif kind < 0.65:
            events.append(DigitPressed(at=now, digit=rng.choice("0123456789*#")))
        elif kind < 0.7:
            events.append(WithdrawalRequested(at=now, by="agent"))
        elif kind < 0.95:
            events.append(Tick(at=now))
        else:
            events.append(CallEnded(at=now))
    for event in [*events, CallEnded(at=now + 1)]:
        if isinstance(event, PromptFinished) and event.play_id == 0:
            event = PromptFinished(
                at=event.at, play_id=plays[-1]
            )  # the latest play, whatever it is
        before = f.state
        for command in f.handle(event):
            if isinstance(command, PlayPrompt):
                plays.append(command.play_id)
        steps.append((before, event, f.state))
    return steps


def test_every_step_the_table_declares_is_taken_and_no_other():
    """The table is exact: calls take every (state, event, next state) it lists, and nothing else
    moves the flow."""
    rng = random.Random(20261128)
    declared = {(s, e, t) for (s, e), tr in TRANSITIONS.items() for t in tr.targets}
    taken = set()
    for _ in range(3000):
        for before, event, after in _random_call(rng):
            if after is not before or (before, type(event), after) in declared:
                assert (before, type(event), after) in declared
                taken.add((before, type(event), after))
    assert taken == declared


def test_the_table_is_well_formed():
    live = set(State) - {State.IDLE, State.ENDED, State.ERROR}
    for (state, event), transition in TRANSITIONS.items():
        assert isinstance(transition, Transition) and transition.targets
        assert transition.what, f"{state} {event.__name__}: the handler says what it does"
        assert State.ERROR not in transition.targets and State.IDLE not in transition.targets
    # The caller can hang up in every state of a live call; nothing leaves ended or error.
    assert {s for (s, e) in TRANSITIONS if e is CallEnded} == live | {State.IDLE}
    assert not {s for (s, _) in TRANSITIONS} & {State.ENDED, State.ERROR}
    # Every state but error is reachable from idle through the table.
    reached, frontier = {State.IDLE}, [State.IDLE]
    while frontier:
        state = frontier.pop()
        for (s, _), transition in TRANSITIONS.items():
            if s is state:
                frontier += transition.targets - reached
                reached |= transition.targets
    assert reached == set(State) - {State.ERROR}


def test_an_undeclared_step_is_refused(monkeypatch):
    table = dict(TRANSITIONS)
    start = table[(State.IDLE, CallStarted)]
    table[(State.IDLE, CallStarted)] = Transition(start.handler, frozenset({State.RECORDING}))
    monkeypatch.setattr(ivr.consent, "TRANSITIONS", table)
    f = flow(ConsentMode.OPT_IN)
    with pytest.raises(ConsentProtocolError, match="undeclared transition"):
        f.handle(CallStarted(at=0))
    assert f.state is State.ERROR


def test_a_second_decision_is_refused_in_code():
    f = flow(ConsentMode.OPT_IN)
    started(f)
    f.handle(DigitPressed(at=1, digit="9"))
    with pytest.raises(ConsentProtocolError, match="exactly one decision"):
        f._decide(Decision.ACCEPTED)
    assert f.decision is Decision.DECLINED
    with pytest.raises(AttributeError):
        f.decision = Decision.ACCEPTED  # read-only: only the flow decides
    with pytest.raises(AttributeError):
        f.state = State.RECORDING


def test_a_second_decision_inside_a_step_stops_the_flow(monkeypatch):
    def decides_twice(self, event):
        self._decide(Decision.NOTIFIED)
        self._decide(Decision.HUNG_UP)

    table = dict(TRANSITIONS)
    table[(State.IDLE, CallStarted)] = Transition(decides_twice, frozenset({State.RECORDING}))
    monkeypatch.setattr(ivr.consent, "TRANSITIONS", table)
    f = flow(ConsentMode.NOTICE, basis=LawfulBasis.CONTRACT)
    with pytest.raises(ConsentProtocolError, match="exactly one decision"):
        f.handle(CallStarted(at=0))
    assert f.state is State.ERROR and f.decision is Decision.NOTIFIED
    with pytest.raises(ConsentProtocolError, match="error state"):
        f.handle(CallEnded(at=1))


def _section(title: str) -> str:
    doc = DOC.read_text()
    return doc.split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_docs_print_the_transition_table():
    rows = [
        tuple(cell.strip().replace("`", "") for cell in line.strip("|").split("|"))
        for line in _section("Transitions").splitlines()
        if line.startswith("| `")
    ]
    assert rows == transition_table()


def test_docs_show_the_state_diagram_drawn_from_the_table():
    section = _section("State diagram")
    shown = section.split("```mermaid\n")[1].split("\n```")[0]
    assert shown == state_diagram()


def test_docs_describe_every_state():
    described = [
        line.split("|")[1].strip().strip("`")
        for line in _section("States").splitlines()
        if line.startswith("| `")
    ]
    assert described == [s.value for s in State]


# -- commands -------------------------------------------------------------------------------------
def _evidence(**changes) -> ConsentEvidence:
    f = flow(ConsentMode.OPT_IN)
    started(f)
    (_, start, _) = f.handle(DigitPressed(at=1, digit="1"))
    return dataclasses.replace(start.evidence, **changes)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PlayPrompt(prompt_id="", play_id=1),
        lambda: PlayPrompt(prompt_id="consent_request", play_id=0),
        lambda: PlayPrompt(prompt_id="consent_request", play_id=True),
        lambda: PlayPrompt(prompt_id="consent_request", play_id="1"),
        lambda: StartRecording(evidence={"decision": "accepted"}),
        lambda: StartRecording(evidence=_evidence(decision=Decision.DECLINED)),
        lambda: StartRecording(evidence=_evidence(decision=None)),
        lambda: StartRecording(evidence=_evidence(recording_started_at=None)),
        lambda: StopRecording(
            discard="yes", reason="r", evidence=_evidence(recording_stopped_at="t")
        ),
        lambda: StopRecording(
            discard=True, reason=" ", evidence=_evidence(recording_stopped_at="t")
        ),
        lambda: StopRecording(discard=True, reason="r", evidence=_evidence()),
        lambda: HandOff(recording=1),
        lambda: HangUp(reason=""),
    ],
)
def test_commands_validate_their_fields(make):
    with pytest.raises(ValueError):
        make()


def test_commands_are_frozen_keyword_only_values():
    play = PlayPrompt(prompt_id="consent_request", play_id=1)
    with pytest.raises(TypeError):
        PlayPrompt("consent_request", 1)
    with pytest.raises(TypeError):
        HangUp("recording limit reached")
    with pytest.raises(dataclasses.FrozenInstanceError):
        play.play_id = 2
    assert play == PlayPrompt(prompt_id="consent_request", play_id=1)
    assert HandOff(recording=True) != HandOff(recording=False)
    assert StopPrompt() == StopPrompt()


# -- evidence -------------------------------------------------------------------------------------
def test_evidence_is_a_frozen_record_and_the_json_the_catalog_stores():
    evidence = _evidence()
    with pytest.raises(dataclasses.FrozenInstanceError):
        evidence.decision = Decision.DECLINED
    stored = dict(evidence)
    assert stored == evidence.as_dict() == json.loads(json.dumps(stored))
    assert tuple(stored) == ConsentEvidence.field_names() == tuple(evidence)
    assert stored["keys"] == {
        "accept": "1",
        "decline": "9",
        "withdraw": "*",
        "withdraw_via": "keys",
    }
    assert stored["keys_pressed"] == [{"digit": "1", "at": "2026-11-28T12:00:01.000000Z"}]
    assert stored["call_started_at"] == "2026-11-28T12:00:00.000000Z"
    assert stored["lawful_basis"] == "consent" and type(stored["lawful_basis"]) is str
    assert stored["decision"] == "accepted" and type(stored["decision"]) is str
    assert stored["prompts_played"][0] == {
        "prompt_id": "consent_request",
        "text": PROMPTS["consent_request"].text,
        "sha256": PROMPTS["consent_request"].sha256,
        "started_at": "2026-11-28T12:00:00.000000Z",
        "ended_at": "2026-11-28T12:00:01.000000Z",
        "interrupted": True,
    }
    assert "keys_in_force" not in evidence and evidence.get("nothing") is None
    with pytest.raises(KeyError):
        evidence["keys_in_force"]


def test_proof_fields_are_evidence_fields():
    proof = ConsentEvidence.proof_field_names()
    assert proof[:2] == ("decision", "key_pressed")  # the answer first
    assert set(proof) < set(ConsentEvidence.field_names())


def test_docs_list_every_evidence_field_in_order():
    listed = [
        name.strip().strip("`")
        for line in _section("The consent evidence (Art. 7(1))").splitlines()
        if line.startswith("| `")
        for name in line.split("|")[1].split(",")
    ]
    assert tuple(listed) == ConsentEvidence.field_names()


# -- withdrawal, where keys cannot reach us, and what the evidence keeps ---------------------------
def _recording_after_hand_off(**kw) -> ConsentFlow:
    f = flow(ConsentMode.OPT_IN, **kw)
    started(f)
    out = f.handle(DigitPressed(at=2, digit="1"))
    (confirm,) = [c for c in out if isinstance(c, PlayPrompt)]
    (handoff,) = f.handle(PromptFinished(at=4, play_id=confirm.play_id))
    assert isinstance(handoff, HandOff) and f.state is State.RECORDING
    return f


def test_the_agent_withdraws_for_the_caller_where_nothing_can_be_played():
    f = _recording_after_hand_off(withdraw=WithdrawChannel.AGENT, plays_after_hand_off=False)
    out = f.handle(WithdrawalRequested(at=30, by="agent"))
    (stop,) = out  # nothing played: the platform cannot play after the hand-off
    assert isinstance(stop, StopRecording) and stop.discard is True
    assert stop.reason == "withdrawn for the caller by agent"
    assert stop.evidence.withdrawn_by == "agent"
    assert stop.evidence.withdrawn_at == "2026-11-28T12:00:30.000000Z"
    assert [p.prompt_id for p in stop.evidence.prompts_played] == [
        "consent_request",
        "recording_started",
    ]
    assert f.state is State.WITHDRAWN and not f.recording


def test_an_agent_request_on_a_basis_without_withdrawal_changes_nothing():
    f = flow(ConsentMode.NOTICE, basis=LawfulBasis.CONTRACT)
    play = started(f)
    f.handle(PromptFinished(at=9, play_id=play.play_id))
    assert f.recording
    assert f.handle(WithdrawalRequested(at=20, by="agent")) == []
    assert f.recording


def test_the_recording_stopped_prompt_is_in_the_evidence_of_the_stop():
    f = _recording_after_hand_off()
    out = f.handle(DigitPressed(at=30, digit="*"))
    (stop,) = [c for c in out if isinstance(c, StopRecording)]
    last = stop.evidence.prompts_played[-1]
    assert last.prompt_id == "recording_stopped"
    assert last.text == PROMPTS["recording_stopped"].text
    assert last.started_at == "2026-11-28T12:00:30.000000Z" and last.ended_at is None
    assert stop.evidence.withdrawn_by == "caller"


def test_every_key_is_in_the_evidence_with_its_time():
    f = flow(ConsentMode.OPT_IN)
    started(f)
    f.handle(DigitPressed(at=1.5, digit="7"))  # invalid: asked again
    f.handle(DigitPressed(at=2.25, digit="#"))
    out = f.handle(DigitPressed(at=6, digit="1"))
    (start,) = [c for c in out if isinstance(c, StartRecording)]
    assert [(k.digit, k.at) for k in start.evidence.keys_pressed] == [
        ("7", "2026-11-28T12:00:01.500000Z"),
        ("#", "2026-11-28T12:00:02.250000Z"),
        ("1", "2026-11-28T12:00:06.000000Z"),
    ]
    assert start.evidence.key_pressed == "1"


def test_the_evidence_keeps_the_set_up_time_apart_from_the_call_clock():
    f = ConsentFlow(policy(ConsentMode.OPT_IN), PROMPTS, T0, setup_seconds=3.1)
    started(f)
    evidence = f.evidence()
    assert evidence.setup_seconds == 3.1
    assert evidence.call_started_at == "2026-11-28T12:00:00.000000Z"
    assert evidence.prompt_started_at == evidence.call_started_at


def test_withdrawal_requests_validate_who_asks():
    with pytest.raises(ValueError, match="withdrawal by"):
        WithdrawalRequested(at=1, by="someone")
