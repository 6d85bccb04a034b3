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

The machine is the table ``TRANSITIONS``: (state, event type) to a handler and the states it may
lead to. A state says everything about where the call is, including what the end of the prompt
now playing leads to (``CONFIRMING``: recording, hand off after the confirmation), so there is no
hidden second machine. ``handle`` is the only place the state changes, and it refuses a handler's
step to a state the table does not declare. docs/consent-flow.md prints the table and a diagram
drawn from it (``transition_table``, ``state_diagram``), kept equal by tests.

The rules (DESIGN.md): no audio may be recorded before the lawful condition holds (an accept key
for ``opt_in``; the notice played to its end without objection for ``opt_out``; the notice played
for ``notice``; at once for ``none``); silence is a refusal; every call ends with exactly one
decision; the withdraw key stops recording for the rest of the call, discarding per policy.
Events the caller can produce at any time (keys, hang-ups, late marks) never raise: unknown or
untimely ones are ignored and counted. Only the driver's own mistakes (events before
``CallStarted``, time running backwards) raise ``ConsentProtocolError``, after which the flow sits
in ``ERROR``; so would a bug in the flow itself (a second decision, an undeclared transition).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from functools import cache
from types import MappingProxyType
from typing import Any, NoReturn

from ivr.capabilities import WithdrawChannel
from ivr.policy import ConsentMode, LawfulBasis
from ivr.wording import OPENING_PROMPT
from media.dtmf import DIGITS
from storage.files import utc_iso

MAX_INVALID_KEYS = 2


class ConsentProtocolError(RuntimeError):
    """The driver fed the flow something impossible (a local error, not the caller's)."""


class State(StrEnum):
    IDLE = "idle"  # before CallStarted
    PROMPTING = "prompting"  # the consent question or notice is playing
    REPROMPTING = "reprompting"  # opt_in: the invalid-key prompt is playing; the question follows
    AWAITING_KEY = "awaiting_key"  # opt_in: question played, waiting for a key or the timeout
    CONFIRMING = "confirming"  # opt_in: recording; recording_started plays, then the hand-off
    RECORDING = "recording"  # recording, nothing pending
    REFUSING = "refusing"  # refused or objected: not_recording plays, then the hand-off
    NOT_RECORDING = "not_recording"  # not recording, nothing pending
    WITHDRAWING = "withdrawing"  # withdrawn before the hand-off: recording_stopped, then hand-off
    WITHDRAWN = "withdrawn"  # withdrawn after the hand-off: recording_stopped, nothing follows
    LIMIT_REACHED = "limit_reached"  # recording stopped at its maximum: recording_limit, hang-up
    ENDED = "ended"
    ERROR = "error"


RECORDING_STATES = frozenset({State.CONFIRMING, State.RECORDING})


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


def _require(ok: bool, message: str) -> None:
    """Events and commands validate themselves: a bad field is a ValueError at construction."""
    if not ok:
        raise ValueError(message)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


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
class WithdrawalRequested(Event):
    """Someone other than the caller's keypad asks, for the caller, to stop the recording: the
    agent the caller told (where keys cannot reach us after the hand-off; ivr.capabilities)."""

    by: str

    def __post_init__(self) -> None:
        Event.__post_init__(self)
        if self.by not in WITHDRAWN_BY:
            raise ValueError(f"withdrawal by {self.by!r}: one of {sorted(WITHDRAWN_BY)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(Event):
    reason: str = "hangup"


# Who stopped a recording on the caller's behalf: the caller's key, or the agent (API, CLI).
WITHDRAWN_BY = frozenset({"caller", "agent"})


# -- consent evidence -----------------------------------------------------------------------------
def _proof(rank: int) -> dict[str, Any]:
    """Field metadata: the field is part of the evidence's short proof of what the caller was
    asked and how they answered (ivr.gdpr.vcon's lawful-basis proof holds exactly these), at
    ``rank`` in it: the answer first, then what was asked."""
    return {"proof": rank}


def _record_name(f: Field[Any]) -> str:
    """A field's name in the stored record: its attribute name unless the metadata says."""
    name: str = f.metadata.get("name", f.name)
    return name


@cache
def _record_attributes(cls: type) -> Mapping[str, str]:
    """A record's field names, in order, each to the attribute that holds it. Worked out once
    per class: the vault reads an evidence as a mapping (``dict(evidence)``), a field at a
    time, twice per call."""
    return MappingProxyType({_record_name(f): f.name for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayedPrompt:
    """One prompt as the caller heard it."""

    prompt_id: str
    text: str  # its words
    sha256: str  # of the exact 8 kHz μ-law audio played
    started_at: str | None  # when its first audio went to the platform
    ended_at: str | None  # when it finished playing, or was cut short
    interrupted: bool  # cut short by a key or the hang-up


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPress:
    """A key the caller pressed, deciding or not."""

    digit: str
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceKeys:
    """The keys in force for the call."""

    accept: str
    decline: str
    withdraw: str | None  # None where the caller is not told of a withdraw key
    withdraw_via: WithdrawChannel  # how the caller was told they can stop the recording


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentEvidence(Mapping[str, Any]):
    """The consent record kept with a recording (Art. 7(1)): what was said, what was pressed,
    what followed. docs/consent-flow.md explains each field; times are UTC ISO strings
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), None for what has not happened.

    The fields are the record's schema: ivr.gdpr.ropa lists them and ivr.gdpr.vcon takes the proof
    fields from here. It is also a read-only mapping from field name to the JSON value the catalog
    stores (``dict(evidence)``), so a driver hands it to the vault as it is.
    """

    policy_id: str = field(metadata=_proof(6))
    policy_version: int = field(metadata=_proof(7))
    lawful_basis: LawfulBasis
    consent_mode: ConsentMode
    purpose: str
    language: str = field(metadata=_proof(8))
    # The call's clock: every time below is this instant plus call time. The caller could hear
    # us from here; the platform announced the call ``setup_seconds`` earlier (a webhook, an
    # ARI StasisStart), while its media was being connected.
    call_started_at: str
    setup_seconds: float | None
    prompt_id: str | None = field(metadata=_proof(2))  # the consent question or notice
    prompt_text: str | None = field(metadata=_proof(3))  # its words
    prompt_sha256: str | None = field(metadata=_proof(4))  # the audio played
    prompt_started_at: str | None = field(metadata=_proof(5))
    prompt_ended_at: str | None
    prompt_played_in_full: bool | None  # None until it has ended
    prompts_played: tuple[PlayedPrompt, ...]  # every prompt, in order
    # "keys" in the record; not as an attribute, where it would hide Mapping.keys().
    keys_in_force: EvidenceKeys = field(metadata={"name": "keys"})
    keys_pressed: tuple[KeyPress, ...]  # every key, in order
    key_pressed: str | None = field(metadata=_proof(1))  # the deciding key
    key_pressed_at: str | None
    decision: Decision | None = field(metadata=_proof(0))
    decided_at: str | None
    recording_started_at: str | None
    recording_stopped_at: str | None
    withdrawn_at: str | None
    withdrawn_by: str | None  # one of WITHDRAWN_BY

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every field's name in the record, in the order the record is written."""
        return tuple(_record_attributes(cls))

    @classmethod
    def proof_field_names(cls) -> tuple[str, ...]:
        """The fields that, together, show what the caller was asked and how they answered."""
        proof = sorted(
            (f.metadata["proof"], _record_name(f)) for f in fields(cls) if "proof" in f.metadata
        )
        return tuple(name for _, name in proof)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object the catalog stores."""
        return {_record_name(f): _json_value(getattr(self, f.name)) for f in fields(self)}

    # The read-only mapping view; JSON values, so ``dict(evidence) == evidence.as_dict()``.
    def __getitem__(self, name: str) -> Any:
        attribute = _record_attributes(type(self)).get(name)
        if attribute is None:
            raise KeyError(name)
        return _json_value(getattr(self, attribute))

    def __iter__(self) -> Iterator[str]:
        return iter(_record_attributes(type(self)))

    def __len__(self) -> int:
        return len(_record_attributes(type(self)))


def _json_value(value: Any) -> Any:
    """An evidence value as plain JSON: enums by value, records as objects, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in fields(value)}
    return value


# -- commands -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """What the flow asks its driver to do. Each validates its fields, as the events do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayPrompt(Command):
    prompt_id: str
    play_id: int  # the flow's number for this play; its PromptFinished carries it back

    def __post_init__(self) -> None:
        _require(_is_text(self.prompt_id), f"not a prompt id: {self.prompt_id!r}")
        _require(
            type(self.play_id) is int and self.play_id > 0,  # not a bool, which is an int too
            f"play id must be a positive integer, got {self.play_id!r}",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPrompt(Command):
    """Barge-in: drop whatever prompt audio is still queued."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRecording(Command):
    evidence: ConsentEvidence

    def __post_init__(self) -> None:
        # The lawful condition, checked once more where it matters: the command itself.
        _require(isinstance(self.evidence, ConsentEvidence), "recording needs consent evidence")
        _require(
            self.evidence.decision in RECORDING_DECISIONS,
            f"no recording on decision {self.evidence.decision!r}",
        )
        _require(self.evidence.recording_started_at is not None, "evidence lacks the start time")


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRecording(Command):
    discard: bool
    reason: str
    evidence: ConsentEvidence

    def __post_init__(self) -> None:
        _require(isinstance(self.discard, bool), f"discard must be a bool, got {self.discard!r}")
        _require(_is_text(self.reason), f"a stop needs a reason, got {self.reason!r}")
        _require(isinstance(self.evidence, ConsentEvidence), "a stop needs consent evidence")
        _require(self.evidence.recording_stopped_at is not None, "evidence lacks the stop time")


@dataclass(frozen=True, slots=True, kw_only=True)
class HandOff(Command):
    """The consent phase is over: connect the caller onwards (e.g. Twilio: close the stream)."""

    recording: bool

    def __post_init__(self) -> None:
        _require(isinstance(self.recording, bool), f"recording must be a bool: {self.recording!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HangUp(Command):
    reason: str

    def __post_init__(self) -> None:
        _require(_is_text(self.reason), f"a hang-up needs a reason, got {self.reason!r}")


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
    withdraw: WithdrawChannel = WithdrawChannel.KEYS  # how the caller is told to withdraw
    discard_on_withdraw: bool = True
    max_recording_seconds: float = 3600.0
    stays_on_stream: bool = False  # no onward connection: keep the caller here while recording
    # The platform can still play to the caller after the hand-off (ivr.capabilities); where it
    # cannot, nothing is played then, and the evidence says so by listing nothing.
    plays_after_hand_off: bool = True

    @property
    def withdrawable(self) -> bool:
        """Whether the caller may stop the recording during the call (key or agent)."""
        return self.withdraw is not WithdrawChannel.NONE


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


_FIRST_PROMPT = OPENING_PROMPT

# What a handler returns: where the flow goes and what the driver must do. None: the event does
# not apply here (a stale mark, a key with no meaning, a tick before the deadline) and is ignored.
Step = tuple[State, list[Command]]


@dataclass
class ConsentFlow:
    policy: FlowPolicy
    prompts: Mapping[str, PromptInfo]
    call_started_wall: datetime
    setup_seconds: float | None = None  # see ConsentEvidence.setup_seconds
    deadline: float | None = field(default=None, init=False)  # when the flow wants a Tick
    ignored_events: int = field(default=0, init=False)
    # Whether audio may be kept now; equal to ``state in RECORDING_STATES``, but a plain
    # attribute because the driver reads it for every media frame.
    recording: bool = field(default=False, init=False)
    _state: State = field(default=State.IDLE, init=False)
    _decision: Decision | None = field(default=None, init=False)
    _decided_at: float | None = field(default=None, init=False)
    _now: float = field(default=0.0, init=False)
    _plays: list[_Play] = field(default_factory=list, init=False)
    _key: tuple[str, float] | None = field(default=None, init=False)
    _keys: list[tuple[str, float]] = field(default_factory=list, init=False)
    _withdrawn_by: str | None = field(default=None, init=False)
    _invalid_keys: int = field(default=0, init=False)
    _recording_started_at: float | None = field(default=None, init=False)
    _recording_stopped_at: float | None = field(default=None, init=False)
    _withdrawn_at: float | None = field(default=None, init=False)
    _handed_off: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        needed = {"recording_started", "not_recording", "recording_stopped", "invalid_key"}
        needed |= {"recording_limit"}
        if self.policy.consent_mode in _FIRST_PROMPT:
            needed.add(_FIRST_PROMPT[self.policy.consent_mode])
        missing = needed - set(self.prompts)
        if missing:
            raise ConsentProtocolError(f"prompts missing for the flow: {sorted(missing)}")

    # Read-only from outside: only ``handle`` moves the state, only ``_decide`` decides.
    @property
    def state(self) -> State:
        return self._state

    @property
    def decision(self) -> Decision | None:
        return self._decision

    @property
    def decided_at(self) -> float | None:
        return self._decided_at

    # -- the one entry point ------------------------------------------------------------------
    def handle(self, event: Event) -> list[Command]:
        self._check_order(event)
        self._now = event.at
        if isinstance(event, DigitPressed) and self._state is not State.ENDED:
            self._keys.append((event.digit, event.at))
        transition = TRANSITIONS.get((self._state, type(event)))
        try:
            step = None if transition is None else transition.handler(self, event)
        except ConsentProtocolError:
            self._state = State.ERROR
            raise
        if transition is None or step is None:
            if not isinstance(event, Tick):  # ticks are ours; count only what the caller did
                self.ignored_events += 1
            return []
        target, commands = step
        if target not in transition.targets:
            self._fail(f"undeclared transition {self._state} --{type(event).__name__}--> {target}")
        self._state = target
        return commands

    def _check_order(self, event: Event) -> None:
        if self._state is State.ERROR:
            raise ConsentProtocolError("flow is in the error state")
        if event.at < self._now:
            self._fail(f"time went backwards: {event.at} < {self._now}")
        if self._state is State.IDLE and not isinstance(event, CallStarted | CallEnded):
            self._fail(f"{type(event).__name__} before CallStarted")
        if isinstance(event, CallStarted) and self._state is not State.IDLE:
            self._fail("CallStarted twice")

    def _fail(self, message: str) -> NoReturn:
        self._state = State.ERROR
        raise ConsentProtocolError(message)

    # -- evidence ------------------------------------------------------------------------------
    def evidence(self) -> ConsentEvidence:
        """The consent record (Art. 7(1)) as it stands now."""
        p = self.policy
        first_id = _FIRST_PROMPT.get(p.consent_mode)
        first = self.prompts.get(first_id) if first_id else None
        main = next((x for x in self._plays if first and x.prompt_id == first.prompt_id), None)
        return ConsentEvidence(
            policy_id=p.policy_id,
            policy_version=p.policy_version,
            lawful_basis=p.lawful_basis,
            consent_mode=p.consent_mode,
            purpose=p.purpose,
            language=p.language,
            call_started_at=utc_iso(self.call_started_wall),
            setup_seconds=self.setup_seconds,
            prompt_id=first.prompt_id if first else None,
            prompt_text=first.text if first else None,
            prompt_sha256=first.sha256 if first else None,
            prompt_started_at=self._wall(main.started_at) if main else None,
            prompt_ended_at=self._wall(main.ended_at) if main else None,
            prompt_played_in_full=None
            if main is None or main.ended_at is None
            else not main.interrupted,
            prompts_played=tuple(
                PlayedPrompt(
                    prompt_id=x.prompt_id,
                    text=self.prompts[x.prompt_id].text,
                    sha256=self.prompts[x.prompt_id].sha256,
                    started_at=self._wall(x.started_at),
                    ended_at=self._wall(x.ended_at),
                    interrupted=x.interrupted,
                )
                for x in self._plays
            ),
            keys_in_force=EvidenceKeys(
                accept=p.accept_key,
                decline=p.decline_key,
                withdraw=p.withdraw_key if p.withdraw is WithdrawChannel.KEYS else None,
                withdraw_via=p.withdraw,
            ),
            keys_pressed=tuple(KeyPress(digit=d, at=self._wall(t) or "") for d, t in self._keys),
            key_pressed=self._key[0] if self._key else None,
            key_pressed_at=self._wall(self._key[1]) if self._key else None,
            decision=self._decision,
            decided_at=self._wall(self._decided_at),
            recording_started_at=self._wall(self._recording_started_at),
            recording_stopped_at=self._wall(self._recording_stopped_at),
            withdrawn_at=self._wall(self._withdrawn_at),
            withdrawn_by=self._withdrawn_by,
        )

    def _wall(self, t: float | None) -> str | None:
        return None if t is None else utc_iso(self.call_started_wall + timedelta(seconds=t))

    # -- building blocks -----------------------------------------------------------------------
    def _play(self, prompt_id: str) -> PlayPrompt:
        play = _Play(len(self._plays) + 1, prompt_id, self._now)
        self._plays.append(play)
        return PlayPrompt(prompt_id=prompt_id, play_id=play.play_id)

    def _current_play(self) -> _Play | None:
        play = self._plays[-1] if self._plays else None
        return play if play and play.ended_at is None else None

    def _played(self, event: PromptFinished) -> bool:
        """Note the end of the prompt playing now; False for a late or stale mark (e.g. one
        echoed after a barge-in), which the caller of this ignores."""
        play = self._current_play()
        if play is None or play.play_id != event.play_id:
            return False
        play.ended_at = self._now
        return True

    def _stop_prompt(self) -> list[Command]:
        play = self._current_play()
        if play is None:
            return []
        play.ended_at, play.interrupted = self._now, True
        return [StopPrompt()]

    def _decide(self, decision: Decision) -> None:
        """A call has exactly one decision: a second is a bug in the flow, and stops it."""
        if self._decision is not None:
            raise ConsentProtocolError(
                f"a call has exactly one decision: {self._decision} stands, {decision} refused"
            )
        self._decision, self._decided_at = decision, self._now

    def _hand_off(self) -> HandOff:
        if self._handed_off:
            raise ConsentProtocolError("the caller was handed off already")
        self._handed_off = True
        return HandOff(recording=self.recording)

    def _start_recording(self) -> StartRecording:
        self.recording = True
        self._recording_started_at = self._now
        self.deadline = self._now + self.policy.max_recording_seconds
        return StartRecording(evidence=self.evidence())

    def _stop_recording(self, *, discard: bool, reason: str) -> list[Command]:
        if not self.recording:
            return []
        self.recording = False
        self._recording_stopped_at = self._now
        return [StopRecording(discard=discard, reason=reason, evidence=self.evidence())]

    def _record(self) -> Step:
        """Start recording now that the decision allows it, and connect onwards unless the
        caller stays here while recording."""
        out: list[Command] = [self._start_recording()]
        if not self.policy.stays_on_stream:
            out.append(self._hand_off())
        return State.RECORDING, out

    def _refuse(self, event: DigitPressed | None, decision: Decision) -> Step:
        out = self._stop_prompt()
        if event is not None:
            self._key = (event.digit, event.at)
        self._decide(decision)
        self.deadline = None
        return State.REFUSING, [*out, self._play("not_recording")]

    # -- handlers: one per table entry; each docstring is the doc's "what happens" -------------
    def _on_start(self, event: CallStarted) -> Step:
        """Play the consent question or notice; in mode none, decide and record at once."""
        mode = self.policy.consent_mode
        if mode is ConsentMode.NONE:
            self._decide(Decision.NOT_ASKED)
            return self._record()
        return State.PROMPTING, [self._play(_FIRST_PROMPT[mode])]

    def _on_question_played(self, event: PromptFinished) -> Step | None:
        """opt_in: await a key until the timeout. opt_out, notice: decide (not objected,
        notified) and record."""
        if not self._played(event):
            return None
        mode = self.policy.consent_mode
        if mode is ConsentMode.OPT_IN:
            self.deadline = self._now + self.policy.prompt_timeout_seconds
            return State.AWAITING_KEY, []
        self._decide(Decision.NOT_OBJECTED if mode is ConsentMode.OPT_OUT else Decision.NOTIFIED)
        return self._record()

    def _on_invalid_key_played(self, event: PromptFinished) -> Step | None:
        """Ask the question again."""
        if not self._played(event):
            return None
        return State.PROMPTING, [self._play(_FIRST_PROMPT[self.policy.consent_mode])]

    def _on_key_deciding(self, event: DigitPressed) -> Step | None:
        """Accept, decline or object; an invalid key asks again, the third is a refusal; in
        notice modes keys are ignored."""
        p, digit = self.policy, event.digit
        mode = p.consent_mode
        if mode is ConsentMode.OPT_IN:
            if digit == p.accept_key:
                return self._accept(event)
            if digit in (p.decline_key, p.withdraw_key):
                return self._refuse(event, Decision.DECLINED)
            return self._invalid_key()
        if mode is ConsentMode.OPT_OUT and digit in (p.decline_key, p.withdraw_key):
            return self._refuse(event, Decision.OBJECTED)
        return None  # notice modes have no refusal key

    def _accept(self, event: DigitPressed) -> Step:
        out = self._stop_prompt()
        self._key = (event.digit, event.at)
        self._decide(Decision.ACCEPTED)
        out.append(self._start_recording())
        return State.CONFIRMING, [*out, self._play("recording_started")]

    def _invalid_key(self) -> Step:
        self._invalid_keys += 1
        out = self._stop_prompt()
        self.deadline = None
        if self._invalid_keys > MAX_INVALID_KEYS:
            state, refusal = self._refuse(None, Decision.NO_RESPONSE)
            return state, out + refusal
        return State.REPROMPTING, [*out, self._play("invalid_key")]

    def _on_tick_awaiting(self, event: Tick) -> Step | None:
        """No key by the deadline: a refusal (no_response)."""
        if self.deadline is None or event.at < self.deadline:
            return None
        return self._refuse(None, Decision.NO_RESPONSE)

    def _on_confirmation_played(self, event: PromptFinished) -> Step | None:
        """Hand off, recording (unless the caller stays here while recording)."""
        if not self._played(event):
            return None
        return State.RECORDING, [] if self.policy.stays_on_stream else [self._hand_off()]

    def _on_key_recording(self, event: DigitPressed) -> Step | None:
        """Withdraw key: stop recording, discard per policy, tell the caller (where the
        platform can still play); other keys are ignored."""
        p = self.policy
        if event.digit != p.withdraw_key or not p.withdrawable:
            return None
        return self._withdraw("caller")

    def _on_withdrawal_requested(self, event: WithdrawalRequested) -> Step | None:
        """The agent asks for the caller: as the withdraw key."""
        if not self.policy.withdrawable:
            return None
        return self._withdraw(event.by)

    def _withdraw(self, by: str) -> Step:
        p = self.policy
        self._withdrawn_at, self._withdrawn_by = self._now, by
        out = self._stop_prompt()
        can_play = not self._handed_off or p.plays_after_hand_off
        # Played before the recording's evidence is sealed, so that the evidence lists it.
        notice = [self._play("recording_stopped")] if can_play else []
        reason = "withdrawn by caller" if by == "caller" else f"withdrawn for the caller by {by}"
        out += self._stop_recording(discard=p.discard_on_withdraw, reason=reason)
        self.deadline = None
        target = State.WITHDRAWN if self._handed_off else State.WITHDRAWING
        return target, [*out, *notice]

    def _on_tick_recording(self, event: Tick) -> Step | None:
        """Maximum length reached: stop recording, tell the caller."""
        if self.deadline is None or event.at < self.deadline:
            return None
        self.deadline = None
        out = self._stop_recording(discard=False, reason="maximum recording time reached")
        return State.LIMIT_REACHED, [*out, self._play("recording_limit")]

    def _on_refusal_played(self, event: PromptFinished) -> Step | None:
        """Hand off, not recording."""
        if not self._played(event):
            return None
        return State.NOT_RECORDING, [self._hand_off()]

    def _on_withdrawal_played(self, event: PromptFinished) -> Step | None:
        """Hand off, not recording."""
        if not self._played(event):
            return None
        return State.WITHDRAWN, [self._hand_off()]

    def _on_late_notice_played(self, event: PromptFinished) -> Step | None:
        """Note the end of the withdrawal notice; the caller was handed off before."""
        if not self._played(event):
            return None
        return State.WITHDRAWN, []

    def _on_limit_played(self, event: PromptFinished) -> Step | None:
        """Hang up (nothing to hand off to after the recording limit)."""
        if not self._played(event):
            return None
        return State.ENDED, [HangUp(reason="recording limit reached")]

    def _on_end(self, event: CallEnded) -> Step:
        """Decide hung_up if undecided; stop recording, keeping what was recorded."""
        play = self._current_play()
        if play is not None:  # cut off by the hang-up; nobody is listening to stop it for
            play.ended_at, play.interrupted = self._now, True
        if self._decision is None:
            self._decide(Decision.HUNG_UP)
        out = self._stop_recording(discard=False, reason=f"call ended ({event.reason})")
        self.deadline = None
        return State.ENDED, out


# -- the table ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Transition:
    """What an event does in a state: the handler, and every state it may lead to."""

    handler: Callable[[ConsentFlow, Any], Step | None]
    targets: frozenset[State]

    @property
    def what(self) -> str:
        return " ".join((self.handler.__doc__ or "").split())


def _to(handler: Callable[[ConsentFlow, Any], Step | None], *targets: State) -> Transition:
    return Transition(handler, frozenset(targets))


_F = ConsentFlow  # short, so that each row of the table fits on a line
_DECIDED_BY_KEY = (State.CONFIRMING, State.REFUSING, State.REPROMPTING)
_WITHDRAWN = (State.WITHDRAWING, State.WITHDRAWN)
# Every state a call can be in once it has begun: the caller may hang up in any of them.
_LIVE = tuple(s for s in State if s not in (State.IDLE, State.ENDED, State.ERROR))

# Any (state, event) pair not listed is ignored (counted in ``ignored_events`` unless a Tick).
TRANSITIONS: Mapping[tuple[State, type[Event]], Transition] = MappingProxyType(
    {
        (State.IDLE, CallStarted): _to(_F._on_start, State.PROMPTING, State.RECORDING),
        (State.IDLE, CallEnded): _to(_F._on_end, State.ENDED),  # left before the flow began
        (State.PROMPTING, PromptFinished): _to(
            _F._on_question_played, State.AWAITING_KEY, State.RECORDING
        ),
        (State.PROMPTING, DigitPressed): _to(_F._on_key_deciding, *_DECIDED_BY_KEY),
        (State.REPROMPTING, PromptFinished): _to(_F._on_invalid_key_played, State.PROMPTING),
        (State.REPROMPTING, DigitPressed): _to(_F._on_key_deciding, *_DECIDED_BY_KEY),
        (State.AWAITING_KEY, DigitPressed): _to(_F._on_key_deciding, *_DECIDED_BY_KEY),
        (State.AWAITING_KEY, Tick): _to(_F._on_tick_awaiting, State.REFUSING),
        (State.CONFIRMING, PromptFinished): _to(_F._on_confirmation_played, State.RECORDING),
        (State.CONFIRMING, DigitPressed): _to(_F._on_key_recording, State.WITHDRAWING),
        (State.CONFIRMING, WithdrawalRequested): _to(
            _F._on_withdrawal_requested, State.WITHDRAWING
        ),
        (State.CONFIRMING, Tick): _to(_F._on_tick_recording, State.LIMIT_REACHED),
        (State.RECORDING, DigitPressed): _to(_F._on_key_recording, *_WITHDRAWN),
        (State.RECORDING, WithdrawalRequested): _to(_F._on_withdrawal_requested, *_WITHDRAWN),
        (State.RECORDING, Tick): _to(_F._on_tick_recording, State.LIMIT_REACHED),
        (State.REFUSING, PromptFinished): _to(_F._on_refusal_played, State.NOT_RECORDING),
        (State.WITHDRAWING, PromptFinished): _to(_F._on_withdrawal_played, State.WITHDRAWN),
        (State.WITHDRAWN, PromptFinished): _to(_F._on_late_notice_played, State.WITHDRAWN),
        (State.LIMIT_REACHED, PromptFinished): _to(_F._on_limit_played, State.ENDED),
        **{(state, CallEnded): _to(_F._on_end, State.ENDED) for state in _LIVE},
    }
)

_EVENT_ORDER: tuple[type[Event], ...] = (
    CallStarted,
    PromptFinished,
    DigitPressed,
    WithdrawalRequested,
    Tick,
    CallEnded,
)
_STATE_ORDER = tuple(State)


def _table_order(pair: tuple[State, type[Event]]) -> tuple[int, int]:
    state, event = pair
    return _STATE_ORDER.index(state), _EVENT_ORDER.index(event)


def transition_table() -> list[tuple[str, str, str, str]]:
    """(state, event, next states, what happens) for every pair the flow reacts to, in the order
    of a call; docs/consent-flow.md prints this table and a test keeps the two equal."""
    rows = []
    for pair in sorted(TRANSITIONS, key=_table_order):
        state, event = pair
        transition = TRANSITIONS[pair]
        targets = ", ".join(s.value for s in _STATE_ORDER if s in transition.targets)
        rows.append((state.value, event.__name__, targets, transition.what))
    return rows


def state_diagram() -> str:
    """The table as a Mermaid state diagram: one arrow per (state, next state), labelled with
    the events that take it; docs/consent-flow.md shows it and a test keeps the two equal."""
    edges: dict[tuple[State, State], list[str]] = {}
    for pair in sorted(TRANSITIONS, key=_table_order):
        state, event = pair
        for target in _STATE_ORDER:
            if target in TRANSITIONS[pair].targets:
                edges.setdefault((state, target), []).append(event.__name__)
    lines = ["stateDiagram-v2", f"    [*] --> {State.IDLE.value}"]
    for (state, target), events in sorted(
        edges.items(), key=lambda e: (_STATE_ORDER.index(e[0][0]), _STATE_ORDER.index(e[0][1]))
    ):
        lines.append(f"    {state.value} --> {target.value}: {', '.join(events)}")
    lines.append(f"    {State.ENDED.value} --> [*]")
    return "\n".join(lines)
