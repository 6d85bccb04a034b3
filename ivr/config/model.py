"""What a loaded configuration is: frozen values, their defaults and limits, and the file's tables.

Each field declares the TOML key it is read from (:mod:`ivr.config.keys`); :data:`FILE_TABLES`
turns those declarations into the key lists the loader accepts, so a new field cannot be
forgotten there. Fields no key sets, and keys refused on purpose, are declared here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import phonenumbers

from ivr.capabilities import PLATFORMS, Capabilities, WithdrawChannel, withdraw_channel
from ivr.config.keys import TableKeys, key, not_a_key, refuses, table_keys
from ivr.policy import WITHDRAWABLE, ConsentMode, LawfulBasis
from ivr.wording import Promise, Terms
from media.prompts import LANGUAGES, PROMPT_IDS

__all__ = [
    "API_ROLES",
    "DEFAULT_AUTH_TOKEN_ENV",
    "FILE_TABLES",
    "PROMPT_IDS",
    "PROMPT_LANGUAGES",
    "ApiTokenConfig",
    "AsteriskSettings",
    "Config",
    "Limits",
    "Line",
    "PromptOverride",
    "Tenant",
    "normalise_number",
]

# --------------------------------------------------------------------------- defaults and limits

# The languages and prompts the service ships (media/prompts.py owns the lists).
PROMPT_LANGUAGES = LANGUAGES
DEFAULT_AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
DEFAULT_STREAM_TOKEN_TTL_SECONDS = 300
DEFAULT_MAX_RECORDING_SECONDS = 3600
DEFAULT_LANGUAGE = "en"
DEFAULT_PROMPT_TIMEOUT_SECONDS = 8.0
DEFAULT_POLICY_VERSION = 1
DEFAULT_SWEEP_MINUTES = 60
DEFAULT_CALL_RECORD_DAYS = 30
DEFAULT_AUDIT_HEAD_MINUTES = 5
DEFAULT_RELAY_LISTEN = ("127.0.0.1", 0)
DEFAULT_LEASE_SECONDS = 15
MAX_LEASE_SECONDS = 600
DEFAULT_ARI_PASSWORD_ENV = "ARI_PASSWORD"
DEFAULT_ARI_APP = "ivr"
DEFAULT_RTP_HOST = "127.0.0.1"
DEFAULT_RTP_PORTS = (40000, 40999)
DEFAULT_DIAL_TEMPLATE = "PJSIP/{number}"
DEFAULT_KEYS: Mapping[str, str] = MappingProxyType(
    {"accept_key": "1", "decline_key": "9", "withdraw_key": "*"}
)
DTMF_KEYS = "0123456789*#"
# [limits]: what one process takes on at once, and how long it waits for a slow client.
DEFAULT_MAX_CALLS = 200
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 1_000_000  # the upper bound of max_calls and max_connections
MAX_RECORDING_SECONDS = 86400
# 100 years: long enough for any legal duty, short enough that "now + retention" stays a date.
MAX_RETENTION_DAYS = 36500
API_ROLES = ("dpo", "supervisor", "admin", "agent")


# --------------------------------------------------------------------------- the values


@dataclass(frozen=True, slots=True)
class PromptOverride:
    """A tenant's own recording for one built-in prompt in one language."""

    # Both named by the table: [tenants.<id>.prompts.<language>.<prompt_id>].
    language: str = field(metadata=not_a_key())
    prompt_id: str = field(metadata=not_a_key())
    file: Path  # absolute; existence checked at load, audio checked by media/
    text: str  # what the recording says, kept as consent evidence
    # What the recording promises (ivr.wording.Promise), declared by the tenant in the prompt's
    # ``promise`` table and checked against every line that plays it.
    promise: Promise = field(default=Promise())


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str = field(metadata=not_a_key())  # named by the table: [tenants.<id>]
    display_name: str
    dpo_contact: str
    # Only what the tenant sets; a line's resolved value is Line.retention_days.
    retention_days: Mapping[LawfulBasis, int]
    prompt_overrides: tuple[PromptOverride, ...] = field(metadata=key("prompts"))
    # "local" (the service's keyring) or "public_key": data keys sealed to ``public_key`` (raw
    # 32-byte X25519), whose private half the controller keeps (docs/key-custody.md).
    key_custody: str = "local"
    public_key: bytes | None = field(
        default=None,
        metadata=refuses(
            {
                "private_key": (
                    "never put the private key in the file: the service must not be able to "
                    'decrypt. Set key_custody = "public_key" and public_key to the public half '
                    "(`ivr keys generate`)"
                )
            }
        ),
    )

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
    # How the caller is told to stop the recording; None: what each platform honours
    # (ivr.capabilities.withdraw_channel).
    withdraw_via: WithdrawChannel | None = None
    platforms: tuple[str, ...] = tuple(PLATFORMS)  # the platforms its calls may come over

    @property
    def withdrawable(self) -> bool:
        """Whether the caller may stop the recording mid-call (key or agent)."""
        return WITHDRAWABLE[self.lawful_basis]

    def withdraw_channel(self, platform: Capabilities) -> WithdrawChannel:
        """How a caller of this line, on ``platform``, can stop the recording."""
        return withdraw_channel(
            platform,
            withdrawable=self.withdrawable,
            hands_off=self.forward_to is not None,
            configured=self.withdraw_via,
        )

    def terms(self, platform: Capabilities) -> Terms:
        """What the caller of this line is told on ``platform`` depends on (ivr.wording)."""
        return Terms(
            language=self.language,
            lawful_basis=self.lawful_basis,
            consent_mode=self.consent_mode,
            purpose=self.purpose,
            accept_key=self.accept_key,
            decline_key=self.decline_key,
            withdraw_key=self.withdraw_key,
            withdraw=self.withdraw_channel(platform),
            discard_on_withdraw=self.discard_on_withdraw,
        )


# Line fields that take part in what the caller is told under one policy_id/policy_version.
POLICY_TERMS = (
    "tenant",
    "purpose",
    "lawful_basis",
    "consent_mode",
    "retention_days",
    "discard_on_withdraw",
    "withdraw_via",
)


@dataclass(frozen=True, slots=True)
class AsteriskSettings:
    """How to reach Asterisk's ARI, and where Asterisk should send a call's RTP."""

    url: str  # base URL of ARI, e.g. http://127.0.0.1:8088/ari
    username: str
    # Read from the variable password_env names: the file holds no secrets.
    password: str | None = field(
        repr=False,
        metadata=not_a_key()
        | refuses(
            {"password": "never put the ARI password in the file; export it and set password_env"}
        ),
    )
    password_env: str
    app: str
    rtp_host: str  # the address Asterisk sends a call's RTP to (ours, as Asterisk sees it)
    rtp_bind: str  # the local address our RTP sockets bind to
    # Both from one key, rtp_ports = "40000-40999".
    rtp_port_min: int = field(metadata=key("rtp_ports"))
    rtp_port_max: int = field(metadata=key("rtp_ports"))
    dial_template: str  # how a line's forward_to becomes an endpoint to originate

    def endpoint(self, forward_to: str) -> str:
        return self.dial_template.format(number=forward_to)


@dataclass(frozen=True, slots=True)
class ApiTokenConfig:
    """An admin API token: only its SHA-256 is in the file, never the token."""

    tenant: str
    name: str
    role: str
    token_sha256: str = field(
        metadata=refuses(
            {
                "token": "never put a token in the file: set token_sha256 to its SHA-256 "
                "(`ivr api token` prints both)"
            }
        )
    )
    expires: datetime | None


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one process takes on at once, and how long it waits for a client ([limits];
    ivr/serving.py enforces the connection limits, ivr/calls/capacity.py the call cap)."""

    # Calls in progress on all platforms together; a call beyond it is turned away.
    max_calls: int = DEFAULT_MAX_CALLS
    # Open HTTP connections (webhooks, API, media streams); None: derived from the descriptor
    # limit at start, after the descriptors max_calls calls need.
    max_connections: int | None = None
    # A request's head (request line and headers) must be in within this many seconds of the
    # connection opening or of the previous response; idle keep-alive connections close then too.
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    # A request's body must be in within this many seconds of its head.
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS


# Keyword-only, so the fields can follow the file's layout: [service], [twilio], [asterisk],
# [retention], [keys], [audit], [tenants], [[lines]], [[api_tokens]]; that order is also the order
# in which "known keys" messages list the top-level tables.
@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path | None = field(metadata=not_a_key())  # the file read
    public_url: str | None = field(metadata=key("service.public_url"))
    max_recording_seconds: int = field(metadata=key("service.max_recording_seconds"))
    limits: Limits = Limits()  # [limits]
    # Read from the variable twilio_auth_token_env names: the file holds no secrets.
    twilio_auth_token: str | None = field(
        repr=False,
        metadata=not_a_key()
        | refuses(
            {
                "twilio.auth_token": (
                    "never put the auth token in the file; export it as an environment variable "
                    f"and set auth_token_env to its name (default {DEFAULT_AUTH_TOKEN_ENV})"
                )
            }
        ),
    )
    twilio_auth_token_env: str = field(metadata=key("twilio.auth_token_env"))
    stream_token_ttl_seconds: int = field(metadata=key("twilio.stream_token_ttl_seconds"))
    asterisk: AsteriskSettings | None = None  # None: no [asterisk] section, ARI not used
    # Per lawful basis: [retention.default_days] over policy.DEFAULT_RETENTION_DAYS, every basis.
    retention_default_days: Mapping[LawfulBasis, int] = field(
        metadata=key("retention.default_days")
    )
    # How often the service purges what has expired.
    retention_sweep_minutes: int = field(
        default=DEFAULT_SWEEP_MINUTES, metadata=key("retention.sweep_interval_minutes")
    )
    # How long a call's caller number is kept once nothing recorded of the call is.
    call_record_days: int = field(
        default=DEFAULT_CALL_RECORD_DAYS, metadata=key("retention.call_record_days")
    )
    # The key schedule (docs/key-custody.md, storage/retirement.py); None: that half is off.
    # A tenant's newest key version this old gets a successor, everything re-wrapped under it.
    key_rotate_every_days: int | None = field(default=None, metadata=key("keys.rotate_every_days"))
    # A version whose successor is this old is destroyed; at least the operator's retention of
    # catalog backups, which need the versions they were wrapped under to be restored.
    key_retire_after_days: int | None = field(default=None, metadata=key("keys.retire_after_days"))
    # Where the audit chain's head is published (storage/audit.py); None: in the data directory.
    audit_head_file: Path | None = field(default=None, metadata=key("audit.head_file"))
    # How often the service publishes the head when it has changed (and always at shutdown).
    audit_head_interval_minutes: int = field(
        default=DEFAULT_AUDIT_HEAD_MINUTES, metadata=key("audit.head_interval_minutes")
    )
    # Where recordings' blobs go (docs/s3.md); None: blobs/ in the data directory.
    blob_url: str | None = field(default=None, metadata=key("storage.blob_url"))
    tenants: Mapping[str, Tenant]
    lines: Mapping[str, Line]  # by E.164 number
    api_tokens: tuple[ApiTokenConfig, ...] = ()
    # Where the catalog is (docs/postgresql.md): a postgresql:// URL, its password not in the
    # file (libpq's PGPASSWORD or ~/.pgpass); None: catalog.sqlite3 in the data directory.
    catalog_url: str | None = field(default=None, metadata=key("storage.catalog_url"))
    # Where the keyring is (docs/key-custody.md, "Several nodes"): a postgresql:// URL of a key
    # store shared by every node, kept apart from the catalog; None: keyring.json in the data
    # directory.
    keyring_url: str | None = field(default=None, metadata=key("storage.keyring_url"))
    # Several machines (docs/cluster.md). Where this node takes calls' requests relayed by the
    # others (host, port; port 0: any free one, each worker of ``--workers N`` on port + its
    # index otherwise), and the URL it gives them to reach it (None: the address it bound).
    relay_listen: tuple[str, int] = field(
        default=DEFAULT_RELAY_LISTEN, metadata=key("cluster.relay_listen")
    )
    relay_advertise: str | None = field(default=None, metadata=key("cluster.relay_advertise"))
    # How long a process's lease in a shared (PostgreSQL) catalog lasts unrenewed: how long
    # after a node dies the others take it for dead (storage/liveness.py).
    lease_seconds: int = field(default=DEFAULT_LEASE_SECONDS, metadata=key("cluster.lease_seconds"))
    demo: bool = field(metadata=not_a_key())
    # Things an operator should know that do not stop the service (log them at start-up).
    warnings: tuple[str, ...] = field(default=(), metadata=not_a_key())

    def line_for(self, number: str) -> Line | None:
        """The line for a dialled number in any notation with a country code, or None."""
        e164 = normalise_number(number)
        return None if e164 is None else self.lines.get(e164)


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


# --------------------------------------------------------------------------- the file's tables

# Every table of the file, named as docs/configuration.md heads it, with the keys it accepts.
# The keys inside [retention.default_days] and tenants' retention_days are lawful bases, and
# those of a tenant's prompts are languages and prompt ids: values, not fields.
FILE_TABLES: Mapping[str, TableKeys] = MappingProxyType(
    {
        "": table_keys(Config),
        "service": table_keys(Config, "service"),
        "limits": table_keys(Limits),
        "twilio": table_keys(Config, "twilio"),
        "retention": table_keys(Config, "retention"),
        "keys": table_keys(Config, "keys"),
        "audit": table_keys(Config, "audit"),
        "storage": table_keys(Config, "storage"),
        "cluster": table_keys(Config, "cluster"),
        "asterisk": table_keys(AsteriskSettings),
        "tenants.<id>": table_keys(Tenant),
        "tenants.<id>.prompts.<language>.<prompt>": table_keys(PromptOverride),
        "tenants.<id>.prompts.<language>.<prompt>.promise": table_keys(Promise),
        "lines": table_keys(Line),
        "api_tokens": table_keys(ApiTokenConfig),
    }
)
