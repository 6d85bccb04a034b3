"""What the caller is told: composed from the line, and only what the platform can honour."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ivr.capabilities import ASTERISK, PLATFORMS, TWILIO, WithdrawChannel, withdraw_channel
from ivr.config import ConfigError, load_config
from ivr.policy import ALLOWED_MODES, WITHDRAWABLE, LawfulBasis
from ivr.wording import LANGUAGES, OPENING_PROMPT, Terms, key_name, promise_of, prompt_texts

# One distinctive word per basis sentence and language: the sentence that names the basis.
BASIS_WORDS = {
    "en": {
        LawfulBasis.CONSENT: "consent",
        LawfulBasis.CONTRACT: "agreement",
        LawfulBasis.LEGAL_OBLIGATION: "law requires",
        LawfulBasis.VITAL_INTERESTS: "life and health",
        LawfulBasis.PUBLIC_TASK: "public interest",
        LawfulBasis.LEGITIMATE_INTERESTS: "legitimate interests",
    },
    "sv": {
        LawfulBasis.CONSENT: "samtycke",
        LawfulBasis.CONTRACT: "avtal",
        LawfulBasis.LEGAL_OBLIGATION: "Lagen",
        LawfulBasis.VITAL_INTERESTS: "liv och hälsa",
        LawfulBasis.PUBLIC_TASK: "allmänt intresse",
        LawfulBasis.LEGITIMATE_INTERESTS: "berättigade intresse",
    },
}


def terms(**changes: object) -> Terms:
    base: dict[str, object] = {
        "language": "en",
        "lawful_basis": LawfulBasis.CONSENT,
        "consent_mode": ALLOWED_MODES[LawfulBasis.CONSENT][0],
        "purpose": "Taking voice messages",
        "accept_key": "1",
        "decline_key": "9",
        "withdraw_key": "*",
        "withdraw": WithdrawChannel.KEYS,
        "discard_on_withdraw": True,
    }
    base.update(changes)
    return Terms(**base)  # type: ignore[arg-type]


CASES = [
    (basis, mode, language, discard)
    for basis, modes in ALLOWED_MODES.items()
    for mode in modes
    for language in LANGUAGES
    for discard in (True, False)
]


@pytest.mark.parametrize(("basis", "mode", "language", "discard"), CASES)
def test_the_opening_prompt_names_the_lines_purpose_and_basis_and_nothing_else(
    basis, mode, language, discard
):
    channel = WithdrawChannel.KEYS if WITHDRAWABLE[basis] else WithdrawChannel.NONE
    t = terms(
        language=language,
        lawful_basis=basis,
        consent_mode=mode,
        purpose="Handling fault reports",
        withdraw=channel,
        discard_on_withdraw=discard,
    )
    texts = prompt_texts(t)
    opening = OPENING_PROMPT.get(mode)
    if opening is None:  # mode none: nothing is said before recording
        assert not set(OPENING_PROMPT.values()) & set(texts)
        return
    text = texts[opening]
    assert "Handling fault reports" in text
    assert BASIS_WORDS[language][basis] in text
    for other, word in BASIS_WORDS[language].items():
        if other is not basis:
            assert word not in text, (other, text)
    # The other modes' opening prompts are never played on this line, so not composed.
    assert set(OPENING_PROMPT.values()) & set(texts) == {opening}
    withdraw_said = key_name("*", language) in text
    assert withdraw_said == WITHDRAWABLE[basis]


def test_public_task_opt_out_is_not_told_it_is_our_legitimate_interest():
    t = terms(lawful_basis=LawfulBasis.PUBLIC_TASK, consent_mode="opt_out")
    text = prompt_texts(t)["objection_notice"]
    assert "public interest" in text
    assert "legitimate" not in text


def test_the_notice_for_vital_interests_does_not_speak_of_an_agreement_or_a_legal_duty():
    t = terms(
        lawful_basis=LawfulBasis.VITAL_INTERESTS,
        consent_mode="notice",
        withdraw=WithdrawChannel.NONE,
    )
    text = prompt_texts(t)["notice_only"]
    assert "agreement" not in text and "legal" not in text and "law" not in text
    assert "life and health" in text


@pytest.mark.parametrize("language", LANGUAGES)
def test_what_is_said_about_withdrawal_follows_discard_on_withdraw(language):
    deleted = prompt_texts(terms(language=language, discard_on_withdraw=True))
    kept = prompt_texts(terms(language=language, discard_on_withdraw=False))
    delete_word = {"en": "deleted", "sv": "raderas"}[language]
    keep_word = {"en": "kept", "sv": "sparas"}[language]
    assert delete_word in deleted["recording_stopped"]
    assert delete_word not in kept["recording_stopped"]
    assert keep_word in kept["recording_stopped"]
    assert delete_word in deleted["consent_request"]
    assert keep_word in kept["consent_request"]


def test_the_keys_named_are_the_lines_keys():
    text = prompt_texts(terms(accept_key="5", decline_key="6", withdraw_key="#"))["consent_request"]
    assert "Press 5" in text and "or 6" in text and "press hash" in text
    assert "Press 1" not in text


def test_agent_withdrawal_tells_the_caller_to_ask_the_agent_and_names_no_key():
    text = prompt_texts(terms(withdraw=WithdrawChannel.AGENT))["consent_request"]
    assert "tell the person you speak with" in text
    assert "star" not in text


@pytest.mark.parametrize(
    ("platform", "hands_off", "channel"),
    [
        (TWILIO, True, WithdrawChannel.AGENT),  # the one-way <Start><Stream> carries no keys
        (TWILIO, False, WithdrawChannel.KEYS),  # the caller stays on the two-way stream
        (ASTERISK, True, WithdrawChannel.KEYS),
        (ASTERISK, False, WithdrawChannel.KEYS),
    ],
)
def test_each_platform_is_given_the_channel_it_honours(platform, hands_off, channel):
    assert withdraw_channel(platform, withdrawable=True, hands_off=hands_off) is channel
    assert withdraw_channel(platform, withdrawable=False, hands_off=hands_off) is (
        WithdrawChannel.NONE
    )


def test_promises_cover_exactly_what_each_prompt_says():
    t = terms(withdraw=WithdrawChannel.AGENT, discard_on_withdraw=False)
    opening = promise_of(t, "consent_request")
    assert opening.lawful_basis is LawfulBasis.CONSENT
    assert opening.purpose == "Taking voice messages"
    assert opening.withdraw is WithdrawChannel.AGENT
    assert opening.deletes_on_withdraw is False
    assert (opening.accept_key, opening.decline_key, opening.withdraw_key) == ("1", "9", None)
    assert promise_of(t, "recording_stopped").deletes_on_withdraw is False
    assert promise_of(t, "recording_started") == promise_of(t, "invalid_key")


# -- the configuration refuses promises the service cannot keep ------------------------------
TENANT = """
[tenants.acme]
display_name = "Acme AB"
dpo_contact = "dpo@acme.example"
"""


def config_with(tmp_path: Path, text: str):
    path = tmp_path / "ivr.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "own.wav").write_bytes(b"RIFF")
    return load_config(path, environ={})


def line(**fields: str) -> str:
    base = {
        "number": '"+46850000001"',
        "tenant": '"acme"',
        "purpose": '"quality assurance"',
        "lawful_basis": '"consent"',
        "forward_to": '"+46850000099"',
    }
    base.update(fields)
    return "[[lines]]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config_with(tmp_path, text)
    assert len(info.value.errors) == 1, info.value.errors
    return info.value.errors[0]


def test_keys_promised_on_a_forwarded_line_twilio_may_serve_are_refused(tmp_path):
    error = refused(tmp_path, TENANT + line(withdraw_via='"keys"'))
    assert "lines[0].withdraw_via" in error and "on twilio no key reaches the service" in error
    config = config_with(tmp_path, TENANT + line(withdraw_via='"keys"', platforms='["asterisk"]'))
    assert config.lines["+46850000001"].withdraw_channel(ASTERISK) is WithdrawChannel.KEYS


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"withdraw_via": '"none"'}, 'cannot be "none"'),
        ({"lawful_basis": '"contract"', "withdraw_via": '"agent"'}, "no withdrawal during"),
        ({"withdraw_via": '"agent"', "forward_to": None}, "no agent on a line without"),
    ],
)
def test_withdraw_channels_that_contradict_the_basis_or_the_line_are_refused(
    tmp_path, fields, problem
):
    text = line(**{k: v for k, v in fields.items() if v is not None})
    if fields.get("forward_to", "") is None:
        text = text.replace('forward_to = "+46850000099"\n', "")
    error = refused(tmp_path, TENANT + text)
    assert "withdraw_via" in error and problem in error


def test_unset_withdraw_via_gives_each_platform_its_own_channel(tmp_path):
    config = config_with(tmp_path, TENANT + line())
    number = config.lines["+46850000001"]
    assert number.platforms == tuple(PLATFORMS)
    assert number.withdraw_channel(TWILIO) is WithdrawChannel.AGENT
    assert number.withdraw_channel(ASTERISK) is WithdrawChannel.KEYS
    twilio_text = prompt_texts(number.terms(TWILIO))["consent_request"]
    asterisk_text = prompt_texts(number.terms(ASTERISK))["consent_request"]
    assert "tell the person you speak with" in twilio_text
    assert "press star at any time" in asterisk_text


OWN_PROMPT = """
[tenants.acme.prompts.en.consent_request]
file = "own.wav"
text = "We would like to record this call for quality assurance, with your consent. ..."
"""


def test_a_tenant_recording_must_declare_what_it_promises(tmp_path):
    error = refused(tmp_path, TENANT + OWN_PROMPT + line(platforms='["asterisk"]'))
    assert "tenants.acme.prompts.en.consent_request.promise" in error
    assert "purpose: (not said) vs 'quality assurance'" in error


def test_a_tenant_recording_promising_keys_cannot_play_where_keys_do_not_work(tmp_path):
    promise = (
        'promise = { lawful_basis = "consent", purpose = "quality assurance", withdraw = "keys",'
        ' deletes_on_withdraw = true, accept_key = "1", decline_key = "9", withdraw_key = "*" }\n'
    )
    config = config_with(tmp_path, TENANT + OWN_PROMPT + promise + line(platforms='["asterisk"]'))
    assert config.tenants["acme"].prompt("en", "consent_request") is not None
    error = refused(tmp_path, TENANT + OWN_PROMPT + promise + line())  # twilio too
    assert "over twilio" in error and "withdraw: 'keys' vs 'agent'" in error
    assert "withdraw_key: '*' vs (not said)" in error
