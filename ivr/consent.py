"""The consent flow: a pure state machine from call events to recording decisions.

Theory of operation
-------------------
One ``ConsentFlow`` per call. The driver (an adapter for Twilio, Asterisk, ...) feeds it events,
each stamped with the call time in seconds (``at``), and carries out the commands it returns:

    CallStarted ─▶ PlayPrompt("consent_request")        (opt_in; other modes per the policy)
    DigitPressed("1") ─▶ StopPrompt, StartRecording, PlayPrompt("recording_started")
    PromptFinished ─▶ HandOff                              (consent phase over for this stream)
    DigitPressed("*") ─▶ StopRecording(discard=True), PlayPrompt("recording_stopped")
    CallEnded ─▶ StopRecording(discard=False)

Nothing here reads a clock, touches a socket or a file: time arrives with the events, and
``deadline`` says when the flow next needs a ``Tick``. That keeps every platform's behaviour the
same and lets the tests drive the machine through every sequence of events.

The rules (DESIGN.md): no audio may be recorded before the lawful condition holds (an accept key
for ``opt_in``; the notice played to its end without objection for ``opt_out``; the notice played
for ``notice``; at once for ``none``); silence is a refusal; every call ends with exactly one
decision; the withdraw key stops recording for the rest of the call, discarding per policy.
Events the caller can produce at any time (keys, hang-ups, late marks) never raise: unknown or
untimely ones are ignored and counted. Only the driver's own mistakes (events before
``CallStarted``, time running backwards) raise ``ConsentProtocolError``, after which the flow sits
in ``ERROR``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ivr.policy import ConsentMode, LawfulBasis
from storage.files import utc_iso

DIGITS = frozenset("0123456789*#ABCD")
MAX_INVALID_KEYS = 2


class ConsentProtocolError(RuntimeError):
    """The driver fed the flow something impossible (a local error, not the caller's)."""


class State(StrEnum):
    IDLE = "idle"
    PROMPTING = "prompting"  # the consent question or notice is playing
    AWAITING_KEY = "awaiting_key"  # opt_in: question played, waiting for a key or the timeout
    RECORDING = "recording"
    NOT_RECORDING = "not_recording"
    WITHDRAWN = "withdrawn"
    ENDED = "ended"
    ERROR = "error"


class Decision(StrEnum):
    ACCEPTED = "accepted"  # opt_in: accept key pressed
    DECLINED = "declined"  # opt_in: decline key pressed
    NO_RESPONSE = "no_response"  # opt_in: silence or only invalid keys (a refusal)
    OBJECTED = "objected"  # opt_out: object key pressed during the notice
    NOT_OBJECTED = "not_objected"  # opt_out: notice ended without objection
    NOTIFIED = "notified"  # notice: the notice was played
    NOT_ASKED = "not_asked"  # none: recorded without a notice (vital interests)
    HUNG_UP = "hung_up"  # the caller left before a decision could be made


RECORDING_DECISIONS = frozenset(
    {Decision.ACCEPTED, Decision.NOT_OBJECTED, Decision.NOTIFIED, Decision.NOT_ASKED}
)


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    at: float

    def __post_init__(self) -> None:
        if not isinstance(self.at, int | float) or self.at < 0 or self.at != self.at:
            raise ValueError(f"event time must be a non-negative number, got {self.at!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(Event):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptFinished(Event):
    play_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitPressed(Event):
    digit: str

    def __post_init__(self) -> None:
        Event.__post_init__(self)
        if self.digit not in DIGITS:
            raise ValueError(f"not a DTMF digit: {self.digit!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(Event):
    reason: str = "hangup"


# -- commands -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Command:
    pass


@dataclass(frozen=True, slots=True)
class PlayPrompt(Command):
    prompt_id: str
    play_id: int


@dataclass(frozen=True, slots=True)
class StopPrompt(Command):
    """Barge-in: drop whatever prompt audio is still queued."""


@dataclass(frozen=True, slots=True)
class StartRecording(Command):
    evidence: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StopRecording(Command):
    discard: bool
    reason: str
    evidence: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HandOff(Command):
    """The consent phase is over: connect the caller onwards (e.g. Twilio: close the stream)."""

    recording: bool


@dataclass(frozen=True, slots=True)
class HangUp(Command):
    reason: str


# -- policy and prompts ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class FlowPolicy:
    """What a line asks of the flow; built from the configuration by the driver."""

    policy_id: str
    policy_version: int
    lawful_basis: LawfulBasis
    consent_mode: ConsentMode
    purpose: str
    language: str
    accept_key: str = "1"
    decline_key: str = "9"
    withdraw_key: str = "*"
    prompt_timeout_seconds: float = 8.0
    withdrawable: bool = True
    discard_on_withdraw: bool = True
    max_recording_seconds: float = 3600.0
    stays_on_stream: bool = False  # no onward connection: keep the caller here while recording


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the evidence must say about a prompt: its words and the hash of the audio played."""

    prompt_id: str
    text: str
    sha256: str
    duration_ms: int


@dataclass(slots=True)
class _Play:
    play_id: int
    prompt_id: str
    started_at: float
    ended_at: float | None = None
    interrupted: bool = False


_FIRST_PROMPT = {
    ConsentMode.OPT_IN: "consent_request",
    ConsentMode.OPT_OUT: "objection_notice",
    ConsentMode.NOTICE: "notice_only",
}


@dataclass
class ConsentFlow:
    policy: FlowPolicy
    prompts: Mapping[str, PromptInfo]
    call_started_wall: datetime
    state: State = State.IDLE
    decision: Decision | None = None
    decided_at: float | None = None
    deadline: float | None = None
    ignored_events: int = 0
    recording: bool = False
    _now: float = 0.0
    _plays: list[_Play] = field(default_factory=list)
    _after_prompt: str | None = None  # what finishing the current prompt leads to
    _key: tuple[str, float] | None = None
    _invalid_keys: int = 0
    _recording_started_at: float | None = None
    _recording_stopped_at: float | None = None
    _withdrawn_at: float | None = None
    _handed_off: bool = False

    def __post_init__(self) -> None:
        needed = {"recording_started", "not_recording", "recording_stopped", "invalid_key"}
        needed |= {"recording_limit"}
        if self.policy.consent_mode in _FIRST_PROMPT:
            needed.add(_FIRST_PROMPT[self.policy.consent_mode])
        missing = needed - set(self.prompts)
        if missing:
            raise ConsentProtocolError(f"prompts missing for the flow: {sorted(missing)}")

    # -- the one entry point ------------------------------------------------------------------
    def handle(self, event: Event) -> list[Command]:
        if self.state is State.ERROR:
            raise ConsentProtocolError("flow is in the error state")
        if event.at < self._now:
            self.state = State.ERROR
            raise ConsentProtocolError(f"time went backwards: {event.at} < {self._now}")
        if self.state is State.IDLE and not isinstance(event, CallStarted | CallEnded):
            self.state = State.ERROR
            raise ConsentProtocolError(f"{type(event).__name__} before CallStarted")
        if isinstance(event, CallStarted) and self.state is not State.IDLE:
            self.state = State.ERROR
            raise ConsentProtocolError("CallStarted twice")
        self._now = event.at
        handler = _HANDLERS.get((self.state, type(event)))
        if handler is None:
            if not isinstance(event, Tick):  # ticks are ours; count only what the caller did
                self.ignored_events += 1
            return []
        return handler(self, event)

    # -- evidence ------------------------------------------------------------------------------
    def evidence(self) -> dict[str, Any]:
        """The consent record (Art. 7(1)): what was said, what was pressed, what followed."""
        p = self.policy

        def wall(t: float | None) -> str | None:
            return None if t is None else utc_iso(self.call_started_wall + timedelta(seconds=t))

        first = self.prompts.get(_FIRST_PROMPT.get(p.consent_mode, ""))
        main_play = next((x for x in self._plays if first and x.prompt_id == first.prompt_id), None)
        return {
            "policy_id": p.policy_id,
            "policy_version": p.policy_version,
            "lawful_basis": p.lawful_basis.value,
            "consent_mode": p.consent_mode.value,
            "purpose": p.purpose,
            "language": p.language,
            "prompt_id": first.prompt_id if first else None,
            "prompt_text": first.text if first else None,
            "prompt_sha256": first.sha256 if first else None,
            "prompt_started_at": wall(main_play.started_at) if main_play else None,
            "prompt_ended_at": wall(main_play.ended_at) if main_play else None,
            "prompt_played_in_full": bool(main_play and not main_play.interrupted)
            if main_play and main_play.ended_at is not None
            else None,
            "prompts_played": [
                {
                    "prompt_id": x.prompt_id,
                    "sha256": self.prompts[x.prompt_id].sha256,
                    "started_at": wall(x.started_at),
                    "ended_at": wall(x.ended_at),
                    "interrupted": x.interrupted,
                }
                for x in self._plays
            ],
            "keys": {
                "accept": p.accept_key,
                "decline": p.decline_key,
                "withdraw": p.withdraw_key if p.withdrawable else None,
            },
            "key_pressed": self._key[0] if self._key else None,
            "key_pressed_at": wall(self._key[1]) if self._key else None,
            "decision": self.decision.value if self.decision else None,
            "decided_at": wall(self.decided_at),
            "recording_started_at": wall(self._recording_started_at),
            "recording_stopped_at": wall(self._recording_stopped_at),
            "withdrawn_at": wall(self._withdrawn_at),
        }

    # -- transitions ---------------------------------------------------------------------------
    def _play(self, prompt_id: str, after: str | None) -> PlayPrompt:
        play = _Play(len(self._plays) + 1, prompt_id, self._now)
        self._plays.append(play)
        self._after_prompt = after
        return PlayPrompt(prompt_id, play.play_id)

    def _current_play(self) -> _Play | None:
        play = self._plays[-1] if self._plays else None
        return play if play and play.ended_at is None else None

    def _stop_prompt(self) -> list[Command]:
        play = self._current_play()
        if play is None:
            return []
        play.ended_at, play.interrupted = self._now, True
        return [StopPrompt()]

    def _decide(self, decision: Decision) -> None:
        assert self.decision is None, "a call has exactly one decision"
        self.decision, self.decided_at = decision, self._now

    def _start_recording(self) -> list[Command]:
        self.recording = True
        self._recording_started_at = self._now
        self.state = State.RECORDING
        self.deadline = self._now + self.policy.max_recording_seconds
        return [StartRecording(self.evidence())]

    def _stop_recording(self, *, discard: bool, reason: str) -> list[Command]:
        if not self.recording:
            return []
        self.recording = False
        self._recording_stopped_at = self._now
        return [StopRecording(discard, reason, self.evidence())]

    def _proceed(self) -> list[Command]:
        """After the decision (and its prompt): connect onwards, or stay here while recording."""
        if self.state is State.RECORDING and self.policy.stays_on_stream:
            return []
        if self._handed_off:
            return []
        self._handed_off = True
        return [HandOff(recording=self.recording)]

    def _on_start(self, event: CallStarted) -> list[Command]:
        """Play the consent question or notice; in mode none, decide and record at once."""
        mode = self.policy.consent_mode
        if mode is ConsentMode.NONE:
            self._decide(Decision.NOT_ASKED)
            return self._start_recording() + self._proceed()
        self.state = State.PROMPTING
        return [self._play(_FIRST_PROMPT[mode], after="decide")]

    def _on_prompt_finished(self, event: PromptFinished) -> list[Command]:
        """Note the prompt's end (stale marks ignored), then await a key (opt_in), record (opt_out,
        notice), ask again, hand off or hang up."""
        play = self._current_play()
        if play is None or play.play_id != event.play_id:
            self.ignored_events += 1  # a late or stale mark (e.g. echoed after a barge-in)
            return []
        play.ended_at = self._now
        after, self._after_prompt = self._after_prompt, None
        mode = self.policy.consent_mode
        if after == "decide":
            if mode is ConsentMode.OPT_IN:
                self.state = State.AWAITING_KEY
                self.deadline = self._now + self.policy.prompt_timeout_seconds
                return []
            self._decide(
                Decision.NOT_OBJECTED if mode is ConsentMode.OPT_OUT else Decision.NOTIFIED
            )
            return self._start_recording() + self._proceed()
        if after == "reprompt":
            self.state = State.PROMPTING
            return [self._play(_FIRST_PROMPT[mode], after="decide")]
        if after == "proceed":
            return self._proceed()
        if after == "hangup":
            self.state = State.ENDED
            return [HangUp("recording limit reached")]
        return []

    def _on_digit_deciding(self, event: DigitPressed) -> list[Command]:
        """Accept, decline or object; an invalid key asks again, the third is a refusal."""
        p, digit = self.policy, event.digit
        mode = p.consent_mode
        if mode is ConsentMode.OPT_IN:
            if digit == p.accept_key:
                return self._accept(event)
            if digit in (p.decline_key, p.withdraw_key):
                return self._refuse(event, Decision.DECLINED)
            self._invalid_keys += 1
            out = self._stop_prompt()
            self.deadline = None
            if self._invalid_keys > MAX_INVALID_KEYS:
                return out + self._refuse(None, Decision.NO_RESPONSE)
            self.state = State.PROMPTING
            return [*out, self._play("invalid_key", after="reprompt")]
        if mode is ConsentMode.OPT_OUT and digit in (p.decline_key, p.withdraw_key):
            return self._refuse(event, Decision.OBJECTED)
        self.ignored_events += 1  # notice modes have no refusal key
        return []

    def _accept(self, event: DigitPressed) -> list[Command]:
        out = self._stop_prompt()
        self._key = (event.digit, event.at)
        self._decide(Decision.ACCEPTED)
        out += self._start_recording()
        return [*out, self._play("recording_started", after="proceed")]

    def _refuse(self, event: DigitPressed | None, decision: Decision) -> list[Command]:
        out = self._stop_prompt()
        if event is not None:
            self._key = (event.digit, event.at)
        self._decide(decision)
        self.state = State.NOT_RECORDING
        self.deadline = None
        return [*out, self._play("not_recording", after="proceed")]

    def _on_tick_awaiting(self, event: Tick) -> list[Command]:
        """No key by the deadline: a refusal (no_response)."""
        if self.deadline is None or event.at < self.deadline:
            return []
        return self._refuse(None, Decision.NO_RESPONSE)

    def _on_tick_recording(self, event: Tick) -> list[Command]:
        """Maximum length reached: stop recording, tell the caller, hang up."""
        if self.deadline is None or event.at < self.deadline:
            return []
        self.deadline = None
        out = self._stop_recording(discard=False, reason="maximum recording time reached")
        self.state = State.NOT_RECORDING
        self._handed_off = True  # nothing to hand off to: the call ends after the notice
        return [*out, self._play("recording_limit", after="hangup")]

    def _on_digit_recording(self, event: DigitPressed) -> list[Command]:
        """Withdraw key: stop recording, discard per policy, tell the caller."""
        p = self.policy
        if event.digit != p.withdraw_key or not p.withdrawable:
            self.ignored_events += 1
            return []
        self._withdrawn_at = event.at
        out = self._stop_prompt()
        out += self._stop_recording(discard=p.discard_on_withdraw, reason="withdrawn by caller")
        self.state = State.WITHDRAWN
        self.deadline = None
        after = "proceed" if not self._handed_off else None
        return [*out, self._play("recording_stopped", after=after)]

    def _on_end(self, event: CallEnded) -> list[Command]:
        """Decide hung_up if undecided; stop recording, keeping what was recorded."""
        play = self._current_play()
        if play is not None:  # cut off by the hang-up; nobody is listening to stop it for
            play.ended_at, play.interrupted = self._now, True
        if self.decision is None:
            self._decide(Decision.HUNG_UP)
        out = self._stop_recording(discard=False, reason=f"call ended ({event.reason})")
        self.state = State.ENDED
        self.deadline = None
        return out


_Handler = Callable[[ConsentFlow, Any], list[Command]]
_HANDLERS: dict[tuple[State, type[Event]], _Handler] = {
    (State.IDLE, CallStarted): ConsentFlow._on_start,
    (State.IDLE, CallEnded): ConsentFlow._on_end,  # the caller left before the flow began
}
for _state in (State.PROMPTING, State.AWAITING_KEY, State.RECORDING, State.NOT_RECORDING):
    _HANDLERS[(_state, PromptFinished)] = ConsentFlow._on_prompt_finished
    _HANDLERS[(_state, CallEnded)] = ConsentFlow._on_end
_HANDLERS[(State.WITHDRAWN, PromptFinished)] = ConsentFlow._on_prompt_finished
_HANDLERS[(State.WITHDRAWN, CallEnded)] = ConsentFlow._on_end
_HANDLERS[(State.PROMPTING, DigitPressed)] = ConsentFlow._on_digit_deciding
_HANDLERS[(State.AWAITING_KEY, DigitPressed)] = ConsentFlow._on_digit_deciding
_HANDLERS[(State.AWAITING_KEY, Tick)] = ConsentFlow._on_tick_awaiting
_HANDLERS[(State.RECORDING, DigitPressed)] = ConsentFlow._on_digit_recording
_HANDLERS[(State.RECORDING, Tick)] = ConsentFlow._on_tick_recording


def transition_table() -> list[tuple[str, str, str]]:
    """(state, event, what happens) for every pair the flow reacts to; docs/consent-flow.md
    prints this table and a test keeps the two equal."""
    return sorted(
        (state.value, event.__name__, " ".join((handler.__doc__ or "").split()))
        for (state, event), handler in _HANDLERS.items()
    )
