"""The configuration file: tenants, lines and each line's consent policy (docs/configuration.md).

``load_config(path)`` reads a TOML file, checks every key and collects every problem before it
reports them together in one :class:`ConfigError`, each as ``<file>: <key path>: <problem>``.
``load_config(None)`` loads the embedded demo (``ivr/demo.toml``), which is also the example
people copy. Secrets never live in the file: ``[twilio] auth_token_env`` names the environment
variable that holds the Twilio auth token.

The lawful basis → consent mode rules, default retention and withdrawal behaviour come from
:mod:`ivr.policy`; this module only applies them to what the file says.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from ivr.policy import (
    DEFAULT_MODE,
    DEFAULT_RETENTION_DAYS,
    DISCARD_ON_WITHDRAW_DEFAULT,
    WITHDRAWABLE,
    ConsentMode,
    LawfulBasis,
    mode_error,
)
from media.prompts import LANGUAGES, PROMPT_IDS
from storage.custody import CUSTODY_MODES, parse_public_key

__all__ = [
    "API_ROLES",
    "DEFAULT_AUTH_TOKEN_ENV",
    "DEMO_CONFIG",
    "DEMO_TWILIO_AUTH_TOKEN",
    "MODE_PROMPT",
    "PROMPT_IDS",
    "PROMPT_KEYS",
    "PROMPT_LANGUAGES",
    "ApiTokenConfig",
    "AsteriskSettings",
    "Config",
    "ConfigError",
    "Line",
    "PromptOverride",
    "Tenant",
    "load_config",
    "normalise_number",
]

DEMO_CONFIG = Path(__file__).parent / "demo.toml"
# Public on purpose: the simulated-call harness signs its webhooks with the same default.
DEMO_TWILIO_AUTH_TOKEN = "demo-auth-token-not-secret"

# The languages and prompts the service ships (media/prompts.py owns the lists).
PROMPT_LANGUAGES = LANGUAGES
# The prompt a call opens with in each mode, and which of the line's keys that prompt names
# (the built-in recordings say "press 1" etc., so other keys need the tenant's own recording).
MODE_PROMPT: Mapping[ConsentMode, str | None] = MappingProxyType(
    {
        ConsentMode.OPT_IN: "consent_request",
        ConsentMode.OPT_OUT: "objection_notice",
        ConsentMode.NOTICE: "notice_only",
        ConsentMode.NONE: None,
    }
)
PROMPT_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "consent_request": ("accept_key", "decline_key", "withdraw_key"),
        "objection_notice": ("decline_key", "withdraw_key"),
    }
)

DEFAULT_AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
DEFAULT_STREAM_TOKEN_TTL_SECONDS = 300
DEFAULT_MAX_RECORDING_SECONDS = 3600
DEFAULT_LANGUAGE = "en"
DEFAULT_PROMPT_TIMEOUT_SECONDS = 8.0
DEFAULT_POLICY_VERSION = 1
DEFAULT_KEYS: Mapping[str, str] = MappingProxyType(
    {"accept_key": "1", "decline_key": "9", "withdraw_key": "*"}
)
DTMF_KEYS = "0123456789*#"
MAX_RECORDING_SECONDS = 86400
# 100 years: long enough for any legal duty, short enough that "now + retention" stays a date.
MAX_RETENTION_DAYS = 36500

_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TWILIO_TOKEN_LIKE = re.compile(r"[0-9a-fA-F]{32}")
_SIP_URI = re.compile(r"(?i)(sips?):([^\s<>\"]+)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, slots=True)
class PromptOverride:
    """A tenant's own recording for one built-in prompt in one language."""

    language: str
    prompt_id: str
    file: Path  # absolute; existence checked at load, audio checked by media/
    text: str  # what the recording says, kept as consent evidence


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    display_name: str
    dpo_contact: str
    # Only what the tenant sets; a line's resolved value is Line.retention_days.
    retention_days: Mapping[LawfulBasis, int]
    prompt_overrides: tuple[PromptOverride, ...]
    # "local" (the service's keyring) or "public_key": data keys sealed to ``public_key`` (raw
    # 32-byte X25519), whose private half the controller keeps (docs/key-custody.md).
    key_custody: str = "local"
    public_key: bytes | None = None

    def prompt(self, language: str, prompt_id: str) -> PromptOverride | None:
        """The tenant's own recording of ``prompt_id`` in ``language``, if it has one."""
        for override in self.prompt_overrides:
            if override.language == language and override.prompt_id == prompt_id:
                return override
        return None


@dataclass(frozen=True, slots=True)
class Line:
    """One dialled number and the policy for recording calls to it (all defaults resolved)."""

    number: str  # E.164
    tenant: str
    purpose: str
    lawful_basis: LawfulBasis
    consent_mode: ConsentMode
    language: str
    accept_key: str
    decline_key: str
    withdraw_key: str
    prompt_timeout_seconds: float
    retention_days: int
    forward_to: str | None  # E.164 or a SIP URI; None: the caller is recorded until hang-up
    max_recording_seconds: int
    policy_id: str
    policy_version: int
    discard_on_withdraw: bool

    @property
    def withdrawable(self) -> bool:
        """Whether the caller may stop the recording mid-call with ``withdraw_key``."""
        return WITHDRAWABLE[self.lawful_basis]


@dataclass(frozen=True, slots=True)
class AsteriskSettings:
    """How to reach Asterisk's ARI, and where Asterisk should send a call's RTP."""

    url: str  # base URL of ARI, e.g. http://127.0.0.1:8088/ari
    username: str
    password: str | None = field(repr=False)
    password_env: str
    app: str
    rtp_host: str  # the address Asterisk sends a call's RTP to (ours, as Asterisk sees it)
    rtp_bind: str  # the local address our RTP sockets bind to
    rtp_port_min: int
    rtp_port_max: int
    dial_template: str  # how a line's forward_to becomes an endpoint to originate

    def endpoint(self, forward_to: str) -> str:
        return self.dial_template.format(number=forward_to)


@dataclass(frozen=True, slots=True)
class ApiTokenConfig:
    """An admin API token: only its SHA-256 is in the file, never the token."""

    tenant: str
    name: str
    role: str
    token_sha256: str
    expires: datetime | None


@dataclass(frozen=True, slots=True)
class Config:
    source: Path | None
    public_url: str | None
    twilio_auth_token: str | None = field(repr=False)
    twilio_auth_token_env: str
    stream_token_ttl_seconds: int
    max_recording_seconds: int
    # Per lawful basis: [retention.default_days] over policy.DEFAULT_RETENTION_DAYS, every basis.
    retention_default_days: Mapping[LawfulBasis, int]
    tenants: Mapping[str, Tenant]
    lines: Mapping[str, Line]  # by E.164 number
    demo: bool
    # Things an operator should know that do not stop the service (log them at start-up).
    warnings: tuple[str, ...] = ()
    asterisk: AsteriskSettings | None = None  # None: no [asterisk] section, ARI not used
    api_tokens: tuple[ApiTokenConfig, ...] = ()
    retention_sweep_minutes: int = 60  # how often the service purges what has expired
    call_record_days: int = 30  # a call's caller number, once nothing recorded of it is kept

    def line_for(self, number: str) -> Line | None:
        """The line for a dialled number in any notation with a country code, or None."""
        e164 = normalise_number(number)
        return None if e164 is None else self.lines.get(e164)


class ConfigError(ValueError):
    """Everything wrong with one configuration file, one ``<file>: <key path>: <problem>`` each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def normalise_number(number: str) -> str | None:
    """E.164 form of a number written with its country code ("+46 8 …", "0046 8 …", "tel:+46…").

    None when it cannot be read as an international number. Only parsing is required, not
    validity: fictional ranges such as +1 555 01xx are fine.
    """
    if not isinstance(number, str):
        return None
    text = number.strip()
    if text[:4].lower() == "tel:":
        text = text[4:].strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# --------------------------------------------------------------------------- loading


def load_config(path: Path | str | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and check a configuration file; ``None`` loads the embedded demo.

    Raises ConfigError listing every problem in the file.
    """
    demo = path is None
    file = DEMO_CONFIG if path is None else Path(path)
    name = str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{name}: cannot read the configuration file: {reason}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"{name}: line {line}: not valid UTF-8 (TOML files are UTF-8)"]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_error(name, text, exc)]) from None
    base_dir = file.resolve().parent
    return _Loader(name, base_dir).build(data, source=file.resolve(), demo=demo, environ=environ)


def _syntax_error(name: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    if match := _TOML_POSITION.search(message):
        where = f"line {match[1]}, column {match[2]}"
        message = message[: match.start()]
    elif match := _TOML_AT_END.search(message):
        where = f"line {text.count(chr(10)) + 1} (end of file)"
        message = message[: match.start()]
    else:  # pragma: no cover - every tomllib error carries a position today
        where = "syntax"
    return f"{name}: {where}: invalid TOML: {message}"


class _Invalid(Exception):
    """A value's problem; the loader adds file and key path."""


class _Bad:
    """The result of a key whose value was wrong (the error is already recorded)."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<invalid>"


_BAD: Any = _Bad()
_ABSENT: Any = object()


def _ok(*values: Any) -> bool:
    return not any(v is _BAD for v in values)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    segment = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{segment}" if path else segment


def _quote(options: Iterable[str]) -> str:
    return ", ".join(f"'{o}'" for o in options)


def _suggest(value: str, options: Iterable[str]) -> str:
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if value.lower() in lowered:
        return f"; did you mean '{lowered[value.lower()]}'?"
    close = difflib.get_close_matches(value.lower(), options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime):
        return f"date-time {value.isoformat()}"
    if isinstance(value, date):
        return f"date {value.isoformat()}"
    if isinstance(value, time):
        return f"time {value.isoformat()}"
    return type(value).__name__  # pragma: no cover - tomllib returns nothing else


def _wrong_type(expected: str, value: Any, hint: str = "") -> _Invalid:
    return _Invalid(f"expected {expected}, got {_describe(value)}{hint}")


# Converters: value from the file → checked value, or raise _Invalid.


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type("a string", value)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value.strip()


def _integer(low: int, high: int | None = None, hint: str = "") -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type("an integer", value, hint)
        if high is None and value < low:
            raise _Invalid(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def _number(low: float, high: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type("a number", value)
        if not low <= value <= high:  # also refuses nan and inf
            raise _Invalid(f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    return convert


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        hint = f" (write it without quotes: {value.strip().lower()})" if _boolish(value) else ""
        raise _wrong_type("a boolean (true or false)", value, hint)
    return value


def _boolish(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("true", "false")


def _choice(options: Iterable[str], what: str) -> Callable[[Any], str]:
    options = tuple(options)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string", value)
        if value in options:
            return value
        raise _Invalid(
            f"unknown {what} {value!r}{_suggest(value, options)} (one of {_quote(options)})"
        )

    return convert


def _lawful_basis(value: Any) -> LawfulBasis:
    return LawfulBasis(_choice([b.value for b in LawfulBasis], "lawful basis")(value))


def _consent_mode(value: Any) -> ConsentMode:
    return ConsentMode(_choice([m.value for m in ConsentMode], "consent mode")(value))


def _dtmf_key(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        raise _wrong_type("a string", value, f' (write it in quotes: "{value}")')
    if not isinstance(value, str):
        raise _wrong_type("a string", value)
    if len(value) != 1 or value not in DTMF_KEYS:
        raise _Invalid(f"expected one phone key (0-9, * or #), got {value!r}")
    return value


_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "its country code is unknown",
    phonenumbers.ValidationResult.TOO_SHORT: "it is too short",
    phonenumbers.ValidationResult.TOO_LONG: "it is too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "it has the wrong length for its country",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "it lacks an area code",
}


def _phone_number(value: Any) -> str:
    if not isinstance(value, str):
        hint = (
            ' (write it in quotes, with "+" and the country code)' if isinstance(value, int) else ""
        )
        raise _wrong_type("a string", value, hint)
    text = value.strip()
    if not text.startswith("+"):
        raise _Invalid(
            f"{value!r} is not in international format; write it with '+' and the country "
            "code, e.g. '+46850000001'"
        )
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        detail = str(exc).split(") ", 1)[-1].rstrip(".")
        raise _Invalid(f"{value!r} is not a phone number: {detail}") from None
    if parsed.extension:
        raise _Invalid(f"{value!r} has an extension; give the number only")
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        why = _POSSIBLE_REASONS.get(reason, "it is not a possible number")
        raise _Invalid(f"{value!r} is not a possible phone number: {why}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _forward_target(value: Any) -> str:
    if isinstance(value, str) and value.strip()[:4].lower() in ("sip:", "sips"):
        match = _SIP_URI.fullmatch(value.strip())
        if not match or not match[2].rsplit("@", 1)[-1].strip(";?:"):
            raise _Invalid(f"{value!r} is not a SIP URI like 'sip:agent@pbx.example.com'")
        return f"{match[1].lower()}:{match[2]}"
    try:
        return _phone_number(value)
    except _Invalid as exc:
        raise _Invalid(f"{exc} (or give a SIP URI 'sip:...')") from None


def _public_url(value: Any) -> str:
    url = _string(value)
    example = "e.g. 'https://ivr.example.com' or 'https://example.com/ivr'"
    if any(c.isspace() for c in url):
        raise _Invalid(f"{url!r} contains whitespace")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise _Invalid(f"{url!r} must start with https:// ({example})")
    if not parts.hostname:
        raise _Invalid(f"{url!r} has no host name ({example})")
    if parts.username is not None or parts.password is not None:
        raise _Invalid(f"{url!r} must not contain a user name or password")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise _Invalid(f"{url!r} has an invalid port") from None
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise _Invalid(f"{url!r} must not have a query (?...) or fragment (#...)")
    if parts.path.endswith("/"):
        raise _Invalid(f"{url!r} must not end with '/'; write {url.rstrip('/')!r}")
    return url


def _sha256_hex(value: Any) -> str:
    text = _string(value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise _Invalid("expected 64 hex digits (the SHA-256 of the token)")
    return text


def _expiry(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise _wrong_type("a date or date-time, like 2027-01-01", value)


def _public_key(value: Any) -> bytes:
    try:
        return parse_public_key(_string(value))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _ari_url(value: Any) -> str:
    text = _string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"{text!r} is not an http(s) URL like 'http://127.0.0.1:8088/ari'")
    return text.rstrip("/")


def _ari_app(value: Any) -> str:
    text = _string(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise _Invalid(f"{text!r} is not a Stasis application name (letters, digits, _ and -)")
    return text


def _port_range(value: Any) -> tuple[int, int]:
    text = _string(value)
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", text)
    if not match:
        raise _Invalid(f"{text!r} is not a port range like '40000-40999'")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low <= high <= 65535:
        raise _Invalid(f"{text!r}: ports must be within 1024-65535, low to high")
    return low, high


def _dial_template(value: Any) -> str:
    text = _string(value)
    if "{number}" not in text:
        raise _Invalid(f"{text!r} must contain {{number}}, e.g. 'PJSIP/{{number}}@trunk'")
    try:
        text.format(number="x")
    except (KeyError, IndexError, ValueError):
        raise _Invalid(f"{text!r}: only {{number}} may appear in braces") from None
    return text


def _env_name(value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type("a string (the name of an environment variable)", value)
    if _TWILIO_TOKEN_LIKE.fullmatch(value.strip()):
        # Never echo it: it is probably the token itself.
        raise _Invalid(
            "this looks like an auth token, not the name of an environment variable; never put "
            "the token in the file: export it (e.g. TWILIO_AUTH_TOKEN=...) and name the variable "
            "here, and rotate the token if this file was shared"
        )
    if not _ENV_NAME.fullmatch(value):
        raise _Invalid(f"{value!r} is not an environment variable name (letters, digits, '_')")
    return value


def _policy_id(value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type("a string", value)
    if not _POLICY_ID.fullmatch(value):
        raise _Invalid(
            f"{value!r} must be 1-128 characters of letters, digits, '.', '_', ':' and '-', "
            "starting with a letter or digit"
        )
    return value


_TOP_KEYS = ("service", "twilio", "asterisk", "retention", "tenants", "lines", "api_tokens")
_API_TOKEN_KEYS = ("tenant", "name", "role", "token_sha256", "expires")
API_ROLES = ("dpo", "supervisor", "admin")
_ASTERISK_KEYS = (
    "url",
    "username",
    "password_env",
    "app",
    "rtp_host",
    "rtp_bind",
    "rtp_ports",
    "dial_template",
)
_SERVICE_KEYS = ("public_url", "max_recording_seconds")
_TWILIO_KEYS = ("auth_token_env", "stream_token_ttl_seconds")
_RETENTION_KEYS = ("default_days", "sweep_interval_minutes", "call_record_days")
_TENANT_KEYS = (
    "display_name",
    "dpo_contact",
    "retention_days",
    "prompts",
    "key_custody",
    "public_key",
)
_TENANT_SECRET_KEYS = {
    "private_key": (
        "never put the private key in the file: the service must not be able to decrypt. Set "
        'key_custody = "public_key" and public_key to the public half (`ivr keys generate`)'
    ),
}
_PROMPT_KEYS = ("file", "text")
_LINE_KEYS = (
    "number",
    "tenant",
    "purpose",
    "lawful_basis",
    "consent_mode",
    "language",
    "accept_key",
    "decline_key",
    "withdraw_key",
    "prompt_timeout_seconds",
    "retention_days",
    "forward_to",
    "max_recording_seconds",
    "policy_id",
    "policy_version",
    "discard_on_withdraw",
)
# What a key does, for the "the built-in prompt says 'press 1'" error.
_KEY_ACTIONS = {
    "accept_key": "to accept",
    "decline_key": "to decline",
    "withdraw_key": "to stop the recording",
}
# Keys that are not in the schema for a reason worth explaining.
_SECRET_KEYS = {
    "auth_token": (
        "never put the auth token in the file; export it as an environment variable and set "
        f"auth_token_env to its name (default {DEFAULT_AUTH_TOKEN_ENV})"
    ),
}
# Line fields that take part in what the caller is told under one policy_id/policy_version.
_POLICY_FIELDS = (
    "tenant",
    "purpose",
    "lawful_basis",
    "consent_mode",
    "retention_days",
    "discard_on_withdraw",
)


class _Loader:
    def __init__(self, name: str, base_dir: Path) -> None:
        self.name = name
        self.base_dir = base_dir
        self.errors: list[str] = []
        # What each tenant sets, for resolving a line's retention.
        self.tenant_retention: dict[str, dict[LawfulBasis, int]] = {}

    # ---- plumbing

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.name}: {path}: {message}" if path else f"{self.name}: {message}")

    def check_keys(
        self, table: Mapping[str, Any], path: str, known: tuple[str, ...], **special: str
    ) -> None:
        for key in table:
            if key in known:
                continue
            if key in special:
                self.error(_join(path, key), special[key])
                continue
            hint = _suggest(key, known) or f" (known keys: {', '.join(known)})"
            self.error(path, f"unknown key {key!r}{hint}")

    def get(
        self,
        table: Mapping[str, Any],
        path: str,
        key: str,
        convert: Callable[[Any], Any],
        default: Any = _ABSENT,
    ) -> Any:
        """The converted value; ``default`` if absent (missing and required when no default)."""
        if key not in table:
            if default is _ABSENT:
                self.error(_join(path, key), "required key is missing")
                return _BAD
            return default
        try:
            return convert(table[key])
        except _Invalid as exc:
            self.error(_join(path, key), str(exc))
            return _BAD

    def table(
        self, parent: Mapping[str, Any], path: str, key: str, hint: str = ""
    ) -> dict[str, Any]:
        """An optional sub-table (empty when absent or wrong)."""
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.error(_join(path, key), f"expected a table, got {_describe(value)}{hint}")
            return {}
        return value

    # ---- sections

    def build(
        self, data: dict[str, Any], *, source: Path, demo: bool, environ: Mapping[str, str]
    ) -> Config:
        self.check_keys(data, "", _TOP_KEYS)
        service = self.table(data, "", "service")
        self.check_keys(service, "service", _SERVICE_KEYS)
        public_url = self.get(service, "service", "public_url", _public_url, None)
        max_recording = self.get(
            service,
            "service",
            "max_recording_seconds",
            _integer(1, MAX_RECORDING_SECONDS),
            DEFAULT_MAX_RECORDING_SECONDS,
        )

        twilio = self.table(data, "", "twilio")
        self.check_keys(twilio, "twilio", _TWILIO_KEYS, **_SECRET_KEYS)
        token_env = self.get(twilio, "twilio", "auth_token_env", _env_name, DEFAULT_AUTH_TOKEN_ENV)
        ttl = self.get(
            twilio,
            "twilio",
            "stream_token_ttl_seconds",
            _integer(10, 3600),
            DEFAULT_STREAM_TOKEN_TTL_SECONDS,
        )

        asterisk = self.asterisk(data, environ) if "asterisk" in data else None
        api_tokens = self.api_tokens(data, tuple(data.get("tenants", {}) or {}))

        retention = self.table(data, "", "retention")
        self.check_keys(retention, "retention", _RETENTION_KEYS)
        overrides = self.retention_table(retention, "retention", "default_days")
        sweep_minutes = self.get(
            retention, "retention", "sweep_interval_minutes", _integer(1, 24 * 60), 60
        )
        call_record_days = self.get(
            retention, "retention", "call_record_days", _integer(1, MAX_RETENTION_DAYS), 30
        )
        retention_defaults = {**DEFAULT_RETENTION_DAYS, **overrides}

        tenants_raw = self.table(data, "", "tenants")
        tenants: dict[str, Tenant] = {}
        declared_prompts: dict[str, set[tuple[str, str]]] = {}
        for tenant_id, raw in tenants_raw.items():
            tenant = self.tenant(tenant_id, raw, declared_prompts.setdefault(tenant_id, set()))
            if tenant is not None:
                tenants[tenant_id] = tenant

        lines = self.lines(
            data,
            tenant_ids=tuple(tenants_raw),
            declared_prompts=declared_prompts,
            max_recording=max_recording if _ok(max_recording) else DEFAULT_MAX_RECORDING_SECONDS,
            retention_defaults=retention_defaults,
        )

        if self.errors:
            raise ConfigError(self.errors)

        token = environ.get(token_env) or None
        warnings: list[str] = []
        if token is None and demo:
            token = DEMO_TWILIO_AUTH_TOKEN
            warnings.append(
                f"demo configuration: {token_env} is not set, so Twilio webhooks are checked "
                f"against the public demo token {DEMO_TWILIO_AUTH_TOKEN!r}; anyone can forge "
                "them. Use a configuration file and a real token for real calls."
            )
        elif token is None:
            warnings.append(
                f"{token_env} is not set: Twilio webhooks will be refused until {token_env} is set"
            )
        if public_url is not None and public_url.startswith("http://"):
            warnings.append(
                f"service.public_url {public_url!r} is not https: Twilio needs https webhooks and "
                "wss media streams outside local testing"
            )
        if not lines:
            warnings.append("no [[lines]] configured: every call hears 'unknown number'")
        if asterisk is not None and asterisk.password is None:
            warnings.append(
                f"{asterisk.password_env} is not set: connecting to ARI without a password"
            )

        return Config(
            source=source,
            public_url=public_url,
            twilio_auth_token=token,
            twilio_auth_token_env=token_env,
            stream_token_ttl_seconds=ttl,
            max_recording_seconds=max_recording,
            retention_default_days=MappingProxyType(retention_defaults),
            retention_sweep_minutes=sweep_minutes,
            call_record_days=call_record_days,
            tenants=MappingProxyType(tenants),
            lines=MappingProxyType(lines),
            demo=demo,
            warnings=tuple(warnings),
            asterisk=asterisk,
            api_tokens=api_tokens,
        )

    def api_tokens(
        self, data: dict[str, Any], tenant_ids: tuple[str, ...]
    ) -> tuple[ApiTokenConfig, ...]:
        raw = data.get("api_tokens", [])
        if not isinstance(raw, list):
            self.error("api_tokens", "expected an array of tables ([[api_tokens]])")
            return ()
        out: list[ApiTokenConfig] = []
        seen: set[str] = set()
        for i, entry in enumerate(raw):
            path = f"api_tokens[{i}]"
            if not isinstance(entry, dict):
                self.error(path, "expected a table")
                continue
            self.check_keys(
                entry,
                path,
                _API_TOKEN_KEYS,
                token="never put a token in the file: set token_sha256 to its SHA-256 "
                "(`ivr api token` prints both)",
            )
            tenant = self.get(entry, path, "tenant", _string)
            name = self.get(entry, path, "name", _string)
            role = self.get(entry, path, "role", _choice(API_ROLES, "role"))
            digest = self.get(entry, path, "token_sha256", _sha256_hex)
            expires = self.get(entry, path, "expires", _expiry, None)
            if _ok(tenant) and tenant not in tenant_ids:
                self.error(_join(path, "tenant"), f"no tenant {tenant!r} in [tenants]")
                continue
            if _ok(digest) and digest in seen:
                self.error(_join(path, "token_sha256"), "the same token is listed twice")
                continue
            if all(_ok(v) for v in (tenant, name, role, digest, expires)):
                seen.add(digest)
                out.append(ApiTokenConfig(tenant, name, role, digest, expires))
        return tuple(out)

    def asterisk(self, data: dict[str, Any], environ: Mapping[str, str]) -> AsteriskSettings | None:
        section = self.table(data, "", "asterisk")
        self.check_keys(
            section,
            "asterisk",
            _ASTERISK_KEYS,
            password="never put the ARI password in the file; export it and set password_env",
        )
        url = self.get(section, "asterisk", "url", _ari_url)
        username = self.get(section, "asterisk", "username", _string)
        password_env = self.get(section, "asterisk", "password_env", _env_name, "ARI_PASSWORD")
        app = self.get(section, "asterisk", "app", _ari_app, "ivr")
        rtp_host = self.get(section, "asterisk", "rtp_host", _string, "127.0.0.1")
        rtp_bind = self.get(section, "asterisk", "rtp_bind", _string, rtp_host)
        ports = self.get(section, "asterisk", "rtp_ports", _port_range, (40000, 40999))
        template = self.get(section, "asterisk", "dial_template", _dial_template, "PJSIP/{number}")
        values = (url, username, password_env, app, rtp_host, rtp_bind, ports, template)
        if not all(_ok(v) for v in values):
            return None
        return AsteriskSettings(
            url=url,
            username=username,
            password=environ.get(password_env) or None,
            password_env=password_env,
            app=app,
            rtp_host=rtp_host,
            rtp_bind=rtp_bind,
            rtp_port_min=ports[0],
            rtp_port_max=ports[1],
            dial_template=template,
        )

    def retention_table(
        self, parent: Mapping[str, Any], path: str, key: str
    ) -> dict[LawfulBasis, int]:
        table = self.table(parent, path, key, " like { consent = 30, contract = 365 }")
        here = _join(path, key)
        bases = [b.value for b in LawfulBasis]
        days = _integer(1, MAX_RETENTION_DAYS)
        out: dict[LawfulBasis, int] = {}
        for name in table:
            if name not in bases:
                self.error(
                    here,
                    f"unknown lawful basis {name!r}{_suggest(name, bases)} "
                    f"(one of {_quote(bases)})",
                )
                continue
            result = self.get(table, here, name, days)
            if _ok(result):
                out[LawfulBasis(name)] = result
        return out

    def tenant(self, tenant_id: str, raw: Any, declared: set[tuple[str, str]]) -> Tenant | None:
        path = _join("tenants", tenant_id)
        errors_before = len(self.errors)
        if not _TENANT_ID.fullmatch(tenant_id):
            self.error(
                path,
                f"tenant id {tenant_id!r} must be 1-63 characters of a-z, 0-9, '_' and '-', "
                "starting with a lower-case letter or digit",
            )
        if not isinstance(raw, dict):
            self.error(path, f"expected a table ([{path}]), got {_describe(raw)}")
            return None
        self.check_keys(raw, path, _TENANT_KEYS, **_TENANT_SECRET_KEYS)
        display_name = self.get(raw, path, "display_name", _string)
        dpo_contact = self.get(raw, path, "dpo_contact", _string)
        retention = self.retention_table(raw, path, "retention_days")
        self.tenant_retention[tenant_id] = retention
        overrides = self.prompt_overrides(raw, path, declared)
        custody, public_key = self.key_custody(raw, path)
        if len(self.errors) != errors_before:
            return None
        return Tenant(
            id=tenant_id,
            display_name=display_name,
            dpo_contact=dpo_contact,
            retention_days=MappingProxyType(retention),
            prompt_overrides=tuple(overrides),
            key_custody=custody,
            public_key=public_key,
        )

    def key_custody(self, raw: Mapping[str, Any], path: str) -> tuple[str, bytes | None]:
        custody = self.get(raw, path, "key_custody", _choice(CUSTODY_MODES, "key custody"), "local")
        public_key = self.get(raw, path, "public_key", _public_key, None)
        if custody == "public_key" and public_key is None:
            self.error(
                _join(path, "public_key"),
                'required with key_custody = "public_key" (base64 of the raw 32-byte X25519 '
                "public key, as `ivr keys generate` prints it)",
            )
        elif custody == "local" and "public_key" in raw:
            self.error(
                _join(path, "public_key"),
                'only used with key_custody = "public_key"; add that line to seal this '
                "tenant's recordings to the key, or remove public_key",
            )
        return custody, public_key if custody == "public_key" else None

    def prompt_overrides(
        self, raw: Mapping[str, Any], path: str, declared: set[tuple[str, str]]
    ) -> list[PromptOverride]:
        prompts = self.table(raw, path, "prompts")
        prompts_path = _join(path, "prompts")
        out: list[PromptOverride] = []
        for language, by_id in prompts.items():
            lang_path = _join(prompts_path, language)
            if language not in PROMPT_LANGUAGES:
                self.error(
                    prompts_path,
                    f"unknown prompt language {language!r}{_suggest(language, PROMPT_LANGUAGES)} "
                    f"(one of {_quote(PROMPT_LANGUAGES)})",
                )
                continue
            if not isinstance(by_id, dict):
                self.error(lang_path, f"expected a table of prompts, got {_describe(by_id)}")
                continue
            for prompt_id, spec in by_id.items():
                here = _join(lang_path, prompt_id)
                if prompt_id not in PROMPT_IDS:
                    self.error(
                        lang_path,
                        f"unknown prompt {prompt_id!r}{_suggest(prompt_id, PROMPT_IDS)} "
                        f"(one of {_quote(PROMPT_IDS)})",
                    )
                    continue
                # Declared even if broken below, so lines are not also blamed for it.
                declared.add((language, prompt_id))
                if not isinstance(spec, dict):
                    self.error(
                        here,
                        f"expected a table with file and text, got {_describe(spec)} (write "
                        f'{here} = {{ file = "...", text = "..." }})',
                    )
                    continue
                self.check_keys(spec, here, _PROMPT_KEYS)
                file = self.get(spec, here, "file", self.prompt_file)
                text = self.get(spec, here, "text", _string)
                if _ok(file, text):
                    out.append(PromptOverride(language, prompt_id, file, text))
        return out

    def prompt_file(self, value: Any) -> Path:
        name = _string(value)
        resolved = (self.base_dir / Path(name).expanduser()).resolve()
        if not resolved.exists():
            raise _Invalid(f"file not found: {resolved}")
        if not resolved.is_file():
            raise _Invalid(f"not a file: {resolved}")
        return resolved

    def lines(
        self,
        data: Mapping[str, Any],
        *,
        tenant_ids: tuple[str, ...],
        declared_prompts: Mapping[str, set[tuple[str, str]]],
        max_recording: int,
        retention_defaults: Mapping[LawfulBasis, int],
    ) -> dict[str, Line]:
        raw_lines = data.get("lines", [])
        if isinstance(raw_lines, dict):
            self.error("lines", "expected an array of tables: write each line as [[lines]]")
            return {}
        if not isinstance(raw_lines, list):
            self.error(
                "lines", f"expected an array of tables ([[lines]]), got {_describe(raw_lines)}"
            )
            return {}

        def tenant_ref(value: Any) -> str:
            if not isinstance(value, str):
                raise _wrong_type("a string", value)
            if value not in tenant_ids:
                known = f" (configured: {_quote(tenant_ids)})" if tenant_ids else ""
                raise _Invalid(
                    f"no tenant {value!r} in [tenants]{_suggest(value, tenant_ids)}{known}"
                )
            return value

        lines: dict[str, Line] = {}
        first_use: dict[str, tuple[int, str]] = {}
        policies: dict[tuple[str, int], tuple[int, Line]] = {}
        for index, raw in enumerate(raw_lines):
            path = _join("lines", index)
            if not isinstance(raw, dict):
                self.error(path, f"expected a table ([[lines]]), got {_describe(raw)}")
                continue
            line = self.line(
                raw,
                path,
                tenant_ref=tenant_ref,
                declared_prompts=declared_prompts,
                max_recording=max_recording,
                retention_defaults=retention_defaults,
            )
            number = line.number if line else self.get(raw, path, "number", _number_quiet, None)
            if isinstance(number, str):
                if number in first_use:
                    other, written = first_use[number]
                    self.error(
                        _join(path, "number"),
                        f"{raw['number']!r} is {number}, already the number of lines[{other}] "
                        f"(written {written!r}); a number can have only one line",
                    )
                    continue
                first_use[number] = (index, raw["number"])
            if line is None:
                continue
            lines[line.number] = line
            self.check_policy(line, index, policies)
        return lines

    def check_policy(
        self, line: Line, index: int, policies: dict[tuple[str, int], tuple[int, Line]]
    ) -> None:
        """One policy_id + policy_version must mean the same terms wherever it is used."""
        key = (line.policy_id, line.policy_version)
        if key not in policies:
            policies[key] = (index, line)
            return
        other_index, other = policies[key]
        for name in _POLICY_FIELDS:
            mine, theirs = getattr(line, name), getattr(other, name)
            if mine != theirs:
                self.error(
                    _join(_join("lines", index), "policy_id"),
                    f"policy {line.policy_id!r} version {line.policy_version} is also used by "
                    f"lines[{other_index}] with {name} {str(theirs)!r}, not {str(mine)!r}; "
                    "give this line its own policy_id, since consent evidence names the policy",
                )
                return

    def line(
        self,
        raw: Mapping[str, Any],
        path: str,
        *,
        tenant_ref: Callable[[Any], str],
        declared_prompts: Mapping[str, set[tuple[str, str]]],
        max_recording: int,
        retention_defaults: Mapping[LawfulBasis, int],
    ) -> Line | None:
        errors_before = len(self.errors)
        self.check_keys(raw, path, _LINE_KEYS)
        number = self.get(raw, path, "number", _phone_number)
        tenant = self.get(raw, path, "tenant", tenant_ref)
        purpose = self.get(raw, path, "purpose", _string)
        basis = self.get(raw, path, "lawful_basis", _lawful_basis)
        mode = self.get(raw, path, "consent_mode", _consent_mode, None)
        if _ok(basis, mode):
            if mode is None:
                mode = DEFAULT_MODE[basis]
            elif problem := mode_error(basis, mode):
                self.error(_join(path, "consent_mode"), problem)
        language = self.get(
            raw, path, "language", _choice(PROMPT_LANGUAGES, "language"), DEFAULT_LANGUAGE
        )

        keys = {
            name: self.get(raw, path, name, _dtmf_key, DEFAULT_KEYS[name]) for name in DEFAULT_KEYS
        }
        names = list(keys)
        for i, name in enumerate(names):
            for earlier in names[:i]:
                if _ok(keys[name], keys[earlier]) and keys[name] == keys[earlier]:
                    self.error(
                        _join(path, name),
                        f"{keys[name]!r} is also the {earlier}; the accept, decline and withdraw "
                        "keys must all differ",
                    )
        if _ok(mode, language, tenant) and mode is not None:
            self.check_prompt_keys(path, tenant, mode, language, keys, declared_prompts)

        timeout = self.get(
            raw,
            path,
            "prompt_timeout_seconds",
            _number(1, 60),
            DEFAULT_PROMPT_TIMEOUT_SECONDS,
        )
        retention = self.get(
            raw,
            path,
            "retention_days",
            _integer(
                1,
                MAX_RETENTION_DAYS,
                hint=" (a line has one lawful basis, so its retention_days is one number)",
            ),
            None,
        )
        forward_to = self.get(raw, path, "forward_to", _forward_target, None)
        if _ok(number) and forward_to is not None and forward_to == number:
            self.error(
                _join(path, "forward_to"),
                f"{forward_to} is the line's own number; the call would loop back to this line",
            )
        max_seconds = self.get(
            raw,
            path,
            "max_recording_seconds",
            _integer(1, MAX_RECORDING_SECONDS),
            max_recording,
        )
        policy_id = self.get(raw, path, "policy_id", _policy_id, None)
        policy_version = self.get(raw, path, "policy_version", _integer(1), DEFAULT_POLICY_VERSION)
        discard = self.get(raw, path, "discard_on_withdraw", _boolean, None)

        if len(self.errors) != errors_before:
            return None
        if retention is None:
            retention = self.tenant_retention.get(tenant, {}).get(basis, retention_defaults[basis])
        return Line(
            number=number,
            tenant=tenant,
            purpose=purpose,
            lawful_basis=basis,
            consent_mode=mode,
            language=language,
            accept_key=keys["accept_key"],
            decline_key=keys["decline_key"],
            withdraw_key=keys["withdraw_key"],
            prompt_timeout_seconds=timeout,
            retention_days=retention,
            forward_to=forward_to,
            max_recording_seconds=max_seconds,
            policy_id=policy_id if policy_id is not None else f"{tenant}-{number.lstrip('+')}",
            policy_version=policy_version,
            discard_on_withdraw=(
                discard if discard is not None else DISCARD_ON_WITHDRAW_DEFAULT[basis]
            ),
        )

    def check_prompt_keys(
        self,
        path: str,
        tenant: str,
        mode: ConsentMode,
        language: str,
        keys: Mapping[str, Any],
        declared_prompts: Mapping[str, set[tuple[str, str]]],
    ) -> None:
        prompt_id = MODE_PROMPT[mode]
        if prompt_id is None or (language, prompt_id) in declared_prompts.get(tenant, set()):
            return
        for name in PROMPT_KEYS.get(prompt_id, ()):
            value, default = keys[name], DEFAULT_KEYS[name]
            if not _ok(value) or value == default:
                continue
            action = (
                "to object"
                if name == "decline_key" and prompt_id == "objection_notice"
                else _KEY_ACTIONS[name]
            )
            self.error(
                _join(path, name),
                f"the built-in {prompt_id} prompt in {language!r} says 'press {default}' "
                f"{action}; provide your own prompt for "
                f"{_join(_join(_join(_join('tenants', tenant), 'prompts'), language), prompt_id)} "
                f"or use {name} = '{default}'",
            )


def _number_quiet(value: Any) -> str | None:
    """A line's number for duplicate detection when the line had other errors."""
    try:
        return _phone_number(value)
    except _Invalid:
        return None
