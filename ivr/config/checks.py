"""Checking one value from the file: converters, the wording of problems, and the error type.

A converter takes what tomllib returned for one key and gives back the checked value, or raises
:class:`Invalid` saying what is wrong with it. It does not know where the value was: the loader
(:mod:`ivr.config.reader`) adds the file and key path, and collects every problem before it
raises one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import SplitResult, urlsplit

import phonenumbers

from ivr.capabilities import PLATFORMS, WithdrawChannel
from ivr.config.model import DTMF_KEYS
from ivr.policy import ConsentMode, LawfulBasis
from storage.blob_url import S3Location
from storage.custody import parse_public_key

__all__ = ["ConfigError", "Invalid"]

_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TWILIO_TOKEN_LIKE = re.compile(r"[0-9a-fA-F]{32}")
_SIP_URI = re.compile(r"(?i)(sips?):([^\s<>\"]+)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """Everything wrong with one configuration file, one ``<file>: <key path>: <problem>`` each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class Invalid(Exception):
    """A value's problem; the loader adds file and key path."""


# A DNS host name: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")

# --------------------------------------------------------------------------- wording


def join(path: str, key: str | int) -> str:
    """The key path of ``key`` inside ``path``, as TOML would write it (``lines[0].number``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    segment = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{segment}" if path else segment


def quote(options: Iterable[str]) -> str:
    return ", ".join(f"'{o}'" for o in options)


def suggest(value: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when one option is close to ``value``, else ``""``."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if value.lower() in lowered:
        return f"; did you mean '{lowered[value.lower()]}'?"
    close = difflib.get_close_matches(value.lower(), options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def describe(value: Any) -> str:
    """A value as the file wrote it, with its TOML type (``string '3600'``)."""
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


def wrong_type(expected: str, value: Any, hint: str = "") -> Invalid:
    return Invalid(f"expected {expected}, got {describe(value)}{hint}")


# --------------------------------------------------------------------------- general converters
# Types are never converted: "3600" is not an integer, and "true" is not a boolean.


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise wrong_type("a string", value)
    if not value.strip():
        raise Invalid("must not be empty")
    return value.strip()


def integer(low: int, high: int | None = None, hint: str = "") -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type("an integer", value, hint)
        if high is None and value < low:
            raise Invalid(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def number(low: float, high: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong_type("a number", value)
        if not low <= value <= high:  # also refuses nan and inf
            raise Invalid(f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    return convert


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        hint = f" (write it without quotes: {value.strip().lower()})" if _boolish(value) else ""
        raise wrong_type("a boolean (true or false)", value, hint)
    return value


def _boolish(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("true", "false")


def choice(options: Iterable[str], what: str) -> Callable[[Any], str]:
    options = tuple(options)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise wrong_type("a string", value)
        if value in options:
            return value
        raise Invalid(
            f"unknown {what} {value!r}{suggest(value, options)} (one of {quote(options)})"
        )

    return convert


# --------------------------------------------------------------------------- lines


def lawful_basis(value: Any) -> LawfulBasis:
    return LawfulBasis(choice([b.value for b in LawfulBasis], "lawful basis")(value))


def withdraw_channel(value: Any) -> WithdrawChannel:
    return WithdrawChannel(choice([c.value for c in WithdrawChannel], "withdraw channel")(value))


def platform_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise wrong_type("a non-empty array of platform names", value)
    names = tuple(choice(PLATFORMS, "platform")(v) for v in value)
    if len(set(names)) != len(names):
        raise Invalid(f"{names} names a platform twice")
    return names


def consent_mode(value: Any) -> ConsentMode:
    return ConsentMode(choice([m.value for m in ConsentMode], "consent mode")(value))


def dtmf_key(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        raise wrong_type("a string", value, f' (write it in quotes: "{value}")')
    if not isinstance(value, str):
        raise wrong_type("a string", value)
    if len(value) != 1 or value not in DTMF_KEYS:
        raise Invalid(f"expected one phone key (0-9, * or #), got {value!r}")
    return value


_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "its country code is unknown",
    phonenumbers.ValidationResult.TOO_SHORT: "it is too short",
    phonenumbers.ValidationResult.TOO_LONG: "it is too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "it has the wrong length for its country",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "it lacks an area code",
}


def phone_number(value: Any) -> str:
    if not isinstance(value, str):
        hint = (
            ' (write it in quotes, with "+" and the country code)' if isinstance(value, int) else ""
        )
        raise wrong_type("a string", value, hint)
    text = value.strip()
    if not text.startswith("+"):
        raise Invalid(
            f"{value!r} is not in international format; write it with '+' and the country "
            "code, e.g. '+46850000001'"
        )
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        detail = str(exc).split(") ", 1)[-1].rstrip(".")
        raise Invalid(f"{value!r} is not a phone number: {detail}") from None
    if parsed.extension:
        raise Invalid(f"{value!r} has an extension; give the number only")
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        why = _POSSIBLE_REASONS.get(reason, "it is not a possible number")
        raise Invalid(f"{value!r} is not a possible phone number: {why}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_number_or_none(value: Any) -> str | None:
    """A line's number for duplicate detection when the line had other errors."""
    try:
        return phone_number(value)
    except Invalid:
        return None


def forward_target(value: Any) -> str:
    if isinstance(value, str) and value.strip()[:4].lower() in ("sip:", "sips"):
        match = _SIP_URI.fullmatch(value.strip())
        if not match or not match[2].rsplit("@", 1)[-1].strip(";?:"):
            raise Invalid(f"{value!r} is not a SIP URI like 'sip:agent@pbx.example.com'")
        return f"{match[1].lower()}:{match[2]}"
    try:
        return phone_number(value)
    except Invalid as exc:
        raise Invalid(f"{exc} (or give a SIP URI 'sip:...')") from None


def policy_id(value: Any) -> str:
    if not isinstance(value, str):
        raise wrong_type("a string", value)
    if not _POLICY_ID.fullmatch(value):
        raise Invalid(
            f"{value!r} must be 1-128 characters of letters, digits, '.', '_', ':' and '-', "
            "starting with a letter or digit"
        )
    return value


# --------------------------------------------------------------------------- service and secrets


def _url(value: Any) -> tuple[str, SplitResult]:
    """A URL setting as given, and split; no whitespace anywhere in it."""
    url = string(value)
    if any(c.isspace() for c in url):
        raise Invalid(f"{url!r} contains whitespace")
    return url, urlsplit(url)


def catalog_url(value: Any) -> str:
    return _postgresql_url(
        value,
        "leave it out for the embedded SQLite catalog; "
        "e.g. 'postgresql://ivr@db.example.com:5432/ivr?sslmode=verify-full'",
    )


def keyring_url(value: Any) -> str:
    return _postgresql_url(
        value,
        "leave it out for keyring.json in the data directory; "
        "e.g. 'postgresql://ivr@keys.example.com:5432/ivr_keys?sslmode=verify-full'",
    )


def _postgresql_url(value: Any, otherwise: str) -> str:
    url, parts = _url(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise Invalid(f"must start with postgresql:// ({otherwise})")
    if parts.password is not None:
        raise Invalid(
            "must not contain a password: give it to libpq through PGPASSWORD or ~/.pgpass "
            "(the file holds no secrets)"
        )
    return url


# Hosts that bind every interface: an address to listen on, never one to be reached at.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})


def listen_address(value: Any) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address), port 0..65535 (0: any free one)."""
    text = string(value)
    example = "e.g. '0.0.0.0:7001', '10.0.0.5:7001' or '[::]:7001'"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise Invalid(f"{text!r} is not host:port ({example})")
    if host.startswith("["):
        if not host.endswith("]"):
            raise Invalid(f"{text!r} is not host:port ({example})")
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise Invalid(f"{host!r} is not an IP address or host name ({example})") from None
    number = int(port)
    if number > 65535:
        raise Invalid(f"port {number} is not between 0 and 65535")
    return host, number


def relay_url(value: Any) -> str:
    """Where the other nodes reach this one's relay listener: http(s)://host:port, no path."""
    url, parts = _url(value)
    example = "e.g. 'http://10.0.0.5:7001'"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{url!r} must be http://host:port or https://host:port ({example})")
    if parts.hostname in WILDCARD_HOSTS or parts.hostname == "::":
        raise Invalid(f"{url!r} names no host the other nodes can reach ({example})")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise Invalid(f"{url!r} has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise Invalid(f"{url!r} must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(f"{url!r} must not have a path, query or fragment ({example})")
    return url.rstrip("/")


def blob_url(value: Any) -> str:
    url = string(value)
    try:
        S3Location.parse(url)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return url


def public_url(value: Any) -> str:
    url, parts = _url(value)
    example = "e.g. 'https://ivr.example.com' or 'https://example.com/ivr'"
    if parts.scheme not in ("https", "http"):
        raise Invalid(f"{url!r} must start with https:// ({example})")
    if not parts.hostname:
        raise Invalid(f"{url!r} has no host name ({example})")
    if parts.username is not None or parts.password is not None:
        raise Invalid(f"{url!r} must not contain a user name or password")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise Invalid(f"{url!r} has an invalid port") from None
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise Invalid(f"{url!r} must not have a query (?...) or fragment (#...)")
    if parts.path.endswith("/"):
        raise Invalid(f"{url!r} must not end with '/'; write {url.rstrip('/')!r}")
    return url


def env_name(value: Any) -> str:
    if not isinstance(value, str):
        raise wrong_type("a string (the name of an environment variable)", value)
    if _TWILIO_TOKEN_LIKE.fullmatch(value.strip()):
        # Never echo it: it is probably the token itself.
        raise Invalid(
            "this looks like an auth token, not the name of an environment variable; never put "
            "the token in the file: export it (e.g. TWILIO_AUTH_TOKEN=...) and name the variable "
            "here, and rotate the token if this file was shared"
        )
    if not _ENV_NAME.fullmatch(value):
        raise Invalid(f"{value!r} is not an environment variable name (letters, digits, '_')")
    return value


def sha256_hex(value: Any) -> str:
    text = string(value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise Invalid("expected 64 hex digits (the SHA-256 of the token)")
    return text


def expiry(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise wrong_type("a date or date-time, like 2027-01-01", value)


def public_key(value: Any) -> bytes:
    try:
        return parse_public_key(string(value))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


# --------------------------------------------------------------------------- asterisk


def ari_url(value: Any) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{text!r} is not an http(s) URL like 'http://127.0.0.1:8088/ari'")
    return text.rstrip("/")


def ari_app(value: Any) -> str:
    text = string(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise Invalid(f"{text!r} is not a Stasis application name (letters, digits, _ and -)")
    return text


def port_range(value: Any) -> tuple[int, int]:
    text = string(value)
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", text)
    if not match:
        raise Invalid(f"{text!r} is not a port range like '40000-40999'")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low <= high <= 65535:
        raise Invalid(f"{text!r}: ports must be within 1024-65535, low to high")
    return low, high


def dial_template(value: Any) -> str:
    text = string(value)
    if "{number}" not in text:
        raise Invalid(f"{text!r} must contain {{number}}, e.g. 'PJSIP/{{number}}@trunk'")
    try:
        text.format(number="x")
    except (KeyError, IndexError, ValueError):
        raise Invalid(f"{text!r}: only {{number}} may appear in braces") from None
    return text
