"""What the caller hears, composed from the line that says what the service does.

Every sentence that promises something is built from the same configuration the flow runs on:
the lawful basis (each of the six has its own sentence), the purpose as configured, the consent
mode, the keys, the withdraw channel the platform can honour (``ivr.capabilities``) and
``discard_on_withdraw``. Nothing is fixed text that could drift from what happens; the prompt
cache synthesises exactly these words, so the SHA-256 in the consent evidence is their audio.

The sentences per prompt:

- the opening prompt (``consent_request``, ``objection_notice``, ``notice_only``): that the call
  is recorded (or that we ask to), the purpose, the basis, what the caller can do now, and for a
  basis the caller may withdraw from: how to stop the recording later and what then happens to
  what was recorded;
- ``recording_stopped``: that the recording stopped, and whether what was recorded is deleted or
  kept;
- the others (``recording_started``, ``not_recording``, ``invalid_key``, ``recording_limit``,
  ``unknown_number``) promise nothing beyond what they state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ivr.capabilities import WithdrawChannel
from ivr.policy import ConsentMode, LawfulBasis

# The opening prompt of each mode; ``none`` opens with nothing (emergency lines).
OPENING_PROMPT: Mapping[ConsentMode, str] = MappingProxyType(
    {
        ConsentMode.OPT_IN: "consent_request",
        ConsentMode.OPT_OUT: "objection_notice",
        ConsentMode.NOTICE: "notice_only",
    }
)
# The prompts whose words depend on the line (the rest are the same for every line).
PROMISING_PROMPTS = (*OPENING_PROMPT.values(), "recording_stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    """What a prompt commits the service to: compared with a tenant's own recording's declared
    promise by the configuration checks, and shown by ``ivr prompts show``."""

    lawful_basis: LawfulBasis | None = None  # the opening prompts name the basis
    purpose: str | None = None
    withdraw: WithdrawChannel | None = None
    deletes_on_withdraw: bool | None = None  # said in the opening prompt and recording_stopped
    # The keys the prompt tells the caller to press, each only where it names one.
    accept_key: str | None = None
    decline_key: str | None = None
    withdraw_key: str | None = None

    def differences(self, other: Promise) -> list[str]:
        """ "name: this vs other" for every field where the two promises differ."""
        return [
            f"{name}: {_shown(getattr(self, name))} vs {_shown(getattr(other, name))}"
            for name in self.__slots__
            if getattr(self, name) != getattr(other, name)
        ]


def _shown(value: object) -> str:
    if value is None:
        return "(not said)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(str(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Terms:
    """The parts of a line that the wording depends on."""

    language: str
    lawful_basis: LawfulBasis
    consent_mode: ConsentMode
    purpose: str
    accept_key: str
    decline_key: str
    withdraw_key: str
    withdraw: WithdrawChannel
    discard_on_withdraw: bool


_KEY_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"en": {"*": "star", "#": "hash"}, "sv": {"*": "stjärna", "#": "fyrkant"}}
)

_BASIS: Mapping[str, Mapping[LawfulBasis, str]] = MappingProxyType(
    {
        "en": {
            LawfulBasis.CONSENT: "We record only with your consent.",
            LawfulBasis.CONTRACT: "We need the recording to perform our agreement with you.",
            LawfulBasis.LEGAL_OBLIGATION: "The law requires us to record it.",
            LawfulBasis.VITAL_INTERESTS: "We record it to protect life and health.",
            LawfulBasis.PUBLIC_TASK: "We record it to carry out a task in the public interest.",
            LawfulBasis.LEGITIMATE_INTERESTS: "We record it based on our legitimate interests.",
        },
        "sv": {
            LawfulBasis.CONSENT: "Vi spelar bara in med ditt samtycke.",
            LawfulBasis.CONTRACT: "Vi behöver inspelningen för att fullgöra vårt avtal med dig.",
            LawfulBasis.LEGAL_OBLIGATION: "Lagen kräver att vi spelar in samtalet.",
            LawfulBasis.VITAL_INTERESTS: "Vi spelar in samtalet för att skydda liv och hälsa.",
            LawfulBasis.PUBLIC_TASK: (
                "Vi spelar in samtalet för att utföra en uppgift av allmänt intresse."
            ),
            LawfulBasis.LEGITIMATE_INTERESTS: (
                "Vi spelar in samtalet med stöd av vårt berättigade intresse."
            ),
        },
    }
)

# Sentences with {placeholders}: purpose, accept, decline, withdraw (spoken key names).
_SENTENCES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "en": {
            "ask": "We would like to record this call, for this purpose: {purpose}.",
            "told": "This call is recorded, for this purpose: {purpose}.",
            "opt_in": (
                "Press {accept} to allow the recording, or {decline} to continue without it. "
                "If you press nothing, we will not record."
            ),
            "opt_out": "To object, press {decline} now.",
            "withdraw_keys": "You can press {withdraw} at any time to stop the recording.",
            "withdraw_agent": (
                "To stop the recording once you are connected, tell the person you speak with."
            ),
            "then_deleted": "What was recorded will then be deleted.",
            "then_kept": "What was recorded until then will be kept.",
            "stopped_deleted": "The recording has stopped, and what was recorded will be deleted.",
            "stopped_kept": "The recording has stopped. What was recorded until now is kept.",
            "recording_started": "The call is now being recorded.",
            "not_recording": "This call will not be recorded.",
            "invalid_key": "That key is not valid.",
            "recording_limit": "The maximum recording time has been reached. Goodbye.",
            "unknown_number": "This number is not in service. Goodbye.",
        },
        "sv": {
            "ask": "Vi vill spela in det här samtalet, för följande ändamål: {purpose}.",
            "told": "Det här samtalet spelas in, för följande ändamål: {purpose}.",
            "opt_in": (
                "Tryck {accept} för att tillåta inspelningen, eller {decline} för att fortsätta "
                "utan inspelning. Om du inte trycker på något spelar vi inte in."
            ),
            "opt_out": "Tryck {decline} nu om du invänder.",
            "withdraw_keys": "Du kan när som helst trycka {withdraw} för att stoppa inspelningen.",
            "withdraw_agent": (
                "Om du vill stoppa inspelningen när du har kopplats vidare, säg det till den du "
                "talar med."
            ),
            "then_deleted": "Det som har spelats in raderas då.",
            "then_kept": "Det som har spelats in fram till dess sparas.",
            "stopped_deleted": "Inspelningen har stoppats, och det som spelades in raderas.",
            "stopped_kept": "Inspelningen har stoppats. Det som spelades in fram till nu sparas.",
            "recording_started": "Samtalet spelas nu in.",
            "not_recording": "Det här samtalet spelas inte in.",
            "invalid_key": "Den knappen är inte giltig.",
            "recording_limit": "Den längsta tillåtna inspelningstiden har nåtts. Hej då.",
            "unknown_number": "Det här numret används inte. Hej då.",
        },
    }
)

LANGUAGES = tuple(_SENTENCES)
_SAME_FOR_EVERY_LINE = (
    "recording_started",
    "not_recording",
    "invalid_key",
    "recording_limit",
    "unknown_number",
)


def key_name(key: str, language: str) -> str:
    """A key as the caller hears it named: "1", "star", "stjärna"."""
    return _KEY_NAMES[language].get(key, key)


def _withdraw_sentences(terms: Terms) -> list[str]:
    s = _SENTENCES[terms.language]
    if terms.withdraw is WithdrawChannel.NONE:
        return []
    how = s["withdraw_keys"] if terms.withdraw is WithdrawChannel.KEYS else s["withdraw_agent"]
    return [how, s["then_deleted"] if terms.discard_on_withdraw else s["then_kept"]]


def prompt_texts(terms: Terms) -> dict[str, str]:
    """Every prompt's words for a line (prompt id → text); the opening prompts other than the
    line's own are left out, since the flow never plays them."""
    lang = terms.language
    s = _SENTENCES[lang]
    values = {
        "purpose": terms.purpose.strip().rstrip("."),
        "accept": key_name(terms.accept_key, lang),
        "decline": key_name(terms.decline_key, lang),
        "withdraw": key_name(terms.withdraw_key, lang),
    }
    texts = {pid: s[pid] for pid in _SAME_FOR_EVERY_LINE}
    deleted = terms.discard_on_withdraw
    texts["recording_stopped"] = s["stopped_deleted"] if deleted else s["stopped_kept"]
    opening = OPENING_PROMPT.get(terms.consent_mode)
    if opening is not None:
        mode = terms.consent_mode
        parts = [s["ask"] if mode is ConsentMode.OPT_IN else s["told"]]
        parts.append(_BASIS[lang][terms.lawful_basis])
        if mode is ConsentMode.OPT_IN:
            parts.append(s["opt_in"])
        elif mode is ConsentMode.OPT_OUT:
            parts.append(s["opt_out"])
        parts += _withdraw_sentences(terms)
        texts[opening] = " ".join(parts)
    return {pid: text.format(**values) for pid, text in texts.items()}


def promise_of(terms: Terms, prompt_id: str) -> Promise:
    """What the prompt ``prompt_id`` promises on this line."""
    mode = terms.consent_mode
    if prompt_id == OPENING_PROMPT.get(mode):
        withdraws = terms.withdraw is not WithdrawChannel.NONE
        return Promise(
            lawful_basis=terms.lawful_basis,
            purpose=terms.purpose,
            withdraw=terms.withdraw,
            deletes_on_withdraw=terms.discard_on_withdraw if withdraws else None,
            accept_key=terms.accept_key if mode is ConsentMode.OPT_IN else None,
            decline_key=terms.decline_key if mode is not ConsentMode.NOTICE else None,
            withdraw_key=terms.withdraw_key if terms.withdraw is WithdrawChannel.KEYS else None,
        )
    if prompt_id == "recording_stopped":
        return Promise(deletes_on_withdraw=terms.discard_on_withdraw)
    return Promise()
