"""Reading a configuration file: TOML and the environment in, a checked :class:`Config` out.

``load_config(path)`` reads a TOML file, checks every key and collects every problem before it
reports them together in one :class:`ConfigError`, each as ``<file>: <key path>: <problem>``.
``load_config(None)`` loads the embedded demo (``ivr/demo.toml``), which is also the example
people copy. Secrets never live in the file: ``[twilio] auth_token_env`` names the environment
variable that holds the Twilio auth token.

The lawful basis → consent mode rules, default retention and withdrawal behaviour come from
:mod:`ivr.policy`; this package only applies them to what the file says.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ivr.config import checks as check
from ivr.config.checks import ConfigError, Invalid, describe, join, quote, suggest
from ivr.config.lines import read_lines
from ivr.config.model import (
    API_ROLES,
    DEFAULT_ARI_APP,
    DEFAULT_ARI_PASSWORD_ENV,
    DEFAULT_AUDIT_HEAD_MINUTES,
    DEFAULT_AUTH_TOKEN_ENV,
    DEFAULT_CALL_RECORD_DAYS,
    DEFAULT_DIAL_TEMPLATE,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_RECORDING_SECONDS,
    DEFAULT_RELAY_LISTEN,
    DEFAULT_RTP_HOST,
    DEFAULT_RTP_PORTS,
    DEFAULT_STREAM_TOKEN_TTL_SECONDS,
    DEFAULT_SWEEP_MINUTES,
    FILE_TABLES,
    MAX_CONNECTIONS,
    MAX_LEASE_SECONDS,
    MAX_RECORDING_SECONDS,
    MAX_RETENTION_DAYS,
    PROMPT_IDS,
    PROMPT_LANGUAGES,
    ApiTokenConfig,
    AsteriskSettings,
    Config,
    Limits,
    PromptOverride,
    Tenant,
)
from ivr.config.reader import Reader, ok
from ivr.policy import DEFAULT_RETENTION_DAYS, LawfulBasis
from ivr.wording import Promise
from storage.custody import CUSTODY_MODES

__all__ = ["DEMO_CONFIG", "DEMO_TWILIO_AUTH_TOKEN", "load_config"]

# In the ivr package, not in this one: pyproject's package-data ships it from there, and the
# docs link to it as the example to copy.
DEMO_CONFIG = Path(__file__).parent.parent / "demo.toml"
# Public on purpose: the simulated-call harness signs its webhooks with the same default.
DEMO_TWILIO_AUTH_TOKEN = "demo-auth-token-not-secret"

_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")


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
    reader = Reader(name, file.resolve().parent)
    return _build(reader, data, source=file.resolve(), demo=demo, environ=environ)


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


# --------------------------------------------------------------------------- the file


def _build(
    r: Reader, data: dict[str, Any], *, source: Path, demo: bool, environ: Mapping[str, str]
) -> Config:
    r.check_keys(data, "", FILE_TABLES[""])
    service = r.table(data, "", "service")
    r.check_keys(service, "service", FILE_TABLES["service"])
    public_url = r.get(service, "service", "public_url", check.public_url, None)
    max_recording = r.get(
        service,
        "service",
        "max_recording_seconds",
        check.integer(1, MAX_RECORDING_SECONDS),
        DEFAULT_MAX_RECORDING_SECONDS,
    )

    storage_table = r.table(data, "", "storage")
    r.check_keys(storage_table, "storage", FILE_TABLES["storage"])
    catalog_url = r.get(storage_table, "storage", "catalog_url", check.catalog_url, None)
    blob_url = r.get(storage_table, "storage", "blob_url", check.blob_url, None)
    keyring_url = r.get(storage_table, "storage", "keyring_url", check.keyring_url, None)

    cluster = r.table(data, "", "cluster")
    r.check_keys(cluster, "cluster", FILE_TABLES["cluster"])
    relay_listen = r.get(
        cluster, "cluster", "relay_listen", check.listen_address, DEFAULT_RELAY_LISTEN
    )
    relay_advertise = r.get(cluster, "cluster", "relay_advertise", check.relay_url, None)
    lease_seconds = r.get(
        cluster,
        "cluster",
        "lease_seconds",
        check.integer(2, MAX_LEASE_SECONDS),
        DEFAULT_LEASE_SECONDS,
    )
    if ok(relay_listen) and relay_advertise is None and relay_listen[0] in check.WILDCARD_HOSTS:
        r.error(
            "cluster.relay_advertise",
            f"must be set when cluster.relay_listen binds {relay_listen[0]!r} (every "
            "interface): the other nodes need an address they can reach, e.g. "
            "'http://10.0.0.5:7001'",
        )

    twilio = r.table(data, "", "twilio")
    r.check_keys(twilio, "twilio", FILE_TABLES["twilio"])
    token_env = r.get(twilio, "twilio", "auth_token_env", check.env_name, DEFAULT_AUTH_TOKEN_ENV)
    ttl = r.get(
        twilio,
        "twilio",
        "stream_token_ttl_seconds",
        check.integer(10, 3600),
        DEFAULT_STREAM_TOKEN_TTL_SECONDS,
    )

    limits = _limits(r, data)
    asterisk = _asterisk(r, data, environ) if "asterisk" in data else None
    api_tokens = _api_tokens(r, data, tuple(data.get("tenants", {}) or {}))

    retention = r.table(data, "", "retention")
    r.check_keys(retention, "retention", FILE_TABLES["retention"])
    overrides = _retention_table(r, retention, "retention", "default_days")
    sweep_minutes = r.get(
        retention,
        "retention",
        "sweep_interval_minutes",
        check.integer(1, 24 * 60),
        DEFAULT_SWEEP_MINUTES,
    )
    call_record_days = r.get(
        retention,
        "retention",
        "call_record_days",
        check.integer(1, MAX_RETENTION_DAYS),
        DEFAULT_CALL_RECORD_DAYS,
    )
    retention_defaults = {**DEFAULT_RETENTION_DAYS, **overrides}

    keys_table = r.table(data, "", "keys")
    r.check_keys(keys_table, "keys", FILE_TABLES["keys"])
    rotate_days = r.get(
        keys_table, "keys", "rotate_every_days", check.integer(1, MAX_RETENTION_DAYS), None
    )
    retire_days = r.get(
        keys_table, "keys", "retire_after_days", check.integer(1, MAX_RETENTION_DAYS), None
    )

    audit = r.table(data, "", "audit")
    r.check_keys(audit, "audit", FILE_TABLES["audit"])
    head_file = r.get(audit, "audit", "head_file", lambda v: _head_file(r, v), None)
    head_minutes = r.get(
        audit,
        "audit",
        "head_interval_minutes",
        check.integer(1, 24 * 60),
        DEFAULT_AUDIT_HEAD_MINUTES,
    )

    tenants_raw = r.table(data, "", "tenants")
    tenants: dict[str, Tenant] = {}
    tenant_retention: dict[str, dict[LawfulBasis, int]] = {}
    for tenant_id, raw in tenants_raw.items():
        tenant = _tenant(r, tenant_id, raw, tenant_retention)
        if tenant is not None:
            tenants[tenant_id] = tenant

    lines = read_lines(
        r,
        data,
        tenant_ids=tuple(tenants_raw),
        tenant_retention=tenant_retention,
        tenant_prompts={t.id: t.prompt_overrides for t in tenants.values()},
        max_recording=max_recording if ok(max_recording) else DEFAULT_MAX_RECORDING_SECONDS,
        retention_defaults=retention_defaults,
    )

    if r.errors:
        raise ConfigError(r.errors)

    token = environ.get(token_env) or None
    warnings: list[str] = []
    if (
        keyring_url is not None
        and catalog_url is not None
        and _same_database(keyring_url, catalog_url)
    ):
        warnings.append(
            "[storage] keyring_url names the catalog's own database: every backup of the "
            "catalog then holds the keys too, unless the backups leave out the table "
            "ivr_keyring (docs/key-custody.md, 'Several nodes')"
        )
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
    if rotate_days is not None and retire_days is None:
        warnings.append(
            "keys.rotate_every_days is set without keys.retire_after_days: old key versions are "
            "never destroyed, so a backup of the catalog still opens recordings erased since "
            "it was taken (docs/key-custody.md)"
        )
    if asterisk is not None and asterisk.password is None:
        warnings.append(f"{asterisk.password_env} is not set: connecting to ARI without a password")

    return Config(
        source=source,
        public_url=public_url,
        twilio_auth_token=token,
        twilio_auth_token_env=token_env,
        stream_token_ttl_seconds=ttl,
        max_recording_seconds=max_recording,
        limits=limits,
        retention_default_days=MappingProxyType(retention_defaults),
        retention_sweep_minutes=sweep_minutes,
        call_record_days=call_record_days,
        key_rotate_every_days=rotate_days,
        key_retire_after_days=retire_days,
        audit_head_file=head_file,
        audit_head_interval_minutes=head_minutes,
        blob_url=blob_url,
        tenants=MappingProxyType(tenants),
        lines=MappingProxyType(lines),
        demo=demo,
        warnings=tuple(warnings),
        asterisk=asterisk,
        api_tokens=api_tokens,
        catalog_url=catalog_url,
        keyring_url=keyring_url,
        relay_listen=relay_listen,
        relay_advertise=relay_advertise,
        lease_seconds=lease_seconds,
    )


def _retention_table(
    r: Reader, parent: Mapping[str, Any], path: str, key: str
) -> dict[LawfulBasis, int]:
    """Days per lawful basis: [retention.default_days], or a tenant's retention_days."""
    table = r.table(parent, path, key, " like { consent = 30, contract = 365 }")
    here = join(path, key)
    bases = [b.value for b in LawfulBasis]
    days = check.integer(1, MAX_RETENTION_DAYS)
    out: dict[LawfulBasis, int] = {}
    for name in table:
        if name not in bases:
            r.error(
                here,
                f"unknown lawful basis {name!r}{suggest(name, bases)} (one of {quote(bases)})",
            )
            continue
        result = r.get(table, here, name, days)
        if ok(result):
            out[LawfulBasis(name)] = result
    return out


# --------------------------------------------------------------------------- [[api_tokens]]


def _api_tokens(
    r: Reader, data: dict[str, Any], tenant_ids: tuple[str, ...]
) -> tuple[ApiTokenConfig, ...]:
    raw = data.get("api_tokens", [])
    if not isinstance(raw, list):
        r.error("api_tokens", "expected an array of tables ([[api_tokens]])")
        return ()
    out: list[ApiTokenConfig] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        path = f"api_tokens[{i}]"
        if not isinstance(entry, dict):
            r.error(path, "expected a table")
            continue
        r.check_keys(entry, path, FILE_TABLES["api_tokens"])
        tenant = r.get(entry, path, "tenant", check.string)
        name = r.get(entry, path, "name", check.string)
        role = r.get(entry, path, "role", check.choice(API_ROLES, "role"))
        digest = r.get(entry, path, "token_sha256", check.sha256_hex)
        expires = r.get(entry, path, "expires", check.expiry, None)
        if ok(tenant) and tenant not in tenant_ids:
            r.error(join(path, "tenant"), f"no tenant {tenant!r} in [tenants]")
            continue
        if ok(digest) and digest in seen:
            r.error(join(path, "token_sha256"), "the same token is listed twice")
            continue
        if all(ok(v) for v in (tenant, name, role, digest, expires)):
            seen.add(digest)
            out.append(ApiTokenConfig(tenant, name, role, digest, expires))
    return tuple(out)


# --------------------------------------------------------------------------- [limits]


def _limits(r: Reader, data: dict[str, Any]) -> Limits:
    section = r.table(data, "", "limits")
    r.check_keys(section, "limits", FILE_TABLES["limits"])
    defaults = Limits()
    max_calls = r.get(
        section, "limits", "max_calls", check.integer(1, MAX_CONNECTIONS), defaults.max_calls
    )
    max_connections = r.get(
        section, "limits", "max_connections", check.integer(16, MAX_CONNECTIONS), None
    )
    header = r.get(
        section,
        "limits",
        "header_timeout_seconds",
        check.number(1, 300),
        defaults.header_timeout_seconds,
    )
    body = r.get(
        section,
        "limits",
        "body_timeout_seconds",
        check.number(1, 3600),
        defaults.body_timeout_seconds,
    )
    if not ok(max_calls, max_connections, header, body):
        return defaults
    return Limits(max_calls, max_connections, header, body)


# --------------------------------------------------------------------------- [asterisk]


def _asterisk(
    r: Reader, data: dict[str, Any], environ: Mapping[str, str]
) -> AsteriskSettings | None:
    section = r.table(data, "", "asterisk")
    r.check_keys(section, "asterisk", FILE_TABLES["asterisk"])
    url = r.get(section, "asterisk", "url", check.ari_url)
    username = r.get(section, "asterisk", "username", check.string)
    password_env = r.get(
        section, "asterisk", "password_env", check.env_name, DEFAULT_ARI_PASSWORD_ENV
    )
    app = r.get(section, "asterisk", "app", check.ari_app, DEFAULT_ARI_APP)
    rtp_host = r.get(section, "asterisk", "rtp_host", check.string, DEFAULT_RTP_HOST)
    rtp_bind = r.get(section, "asterisk", "rtp_bind", check.string, rtp_host)
    ports = r.get(section, "asterisk", "rtp_ports", check.port_range, DEFAULT_RTP_PORTS)
    template = r.get(
        section, "asterisk", "dial_template", check.dial_template, DEFAULT_DIAL_TEMPLATE
    )
    values = (url, username, password_env, app, rtp_host, rtp_bind, ports, template)
    if not all(ok(v) for v in values):
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


# --------------------------------------------------------------------------- [tenants.<id>]


def _tenant(
    r: Reader,
    tenant_id: str,
    raw: Any,
    tenant_retention: dict[str, dict[LawfulBasis, int]],
) -> Tenant | None:
    path = join("tenants", tenant_id)
    errors_before = len(r.errors)
    if not _TENANT_ID.fullmatch(tenant_id):
        r.error(
            path,
            f"tenant id {tenant_id!r} must be 1-63 characters of a-z, 0-9, '_' and '-', "
            "starting with a lower-case letter or digit",
        )
    if not isinstance(raw, dict):
        r.error(path, f"expected a table ([{path}]), got {describe(raw)}")
        return None
    r.check_keys(raw, path, FILE_TABLES["tenants.<id>"])
    display_name = r.get(raw, path, "display_name", check.string)
    dpo_contact = r.get(raw, path, "dpo_contact", check.string)
    retention = _retention_table(r, raw, path, "retention_days")
    tenant_retention[tenant_id] = retention
    overrides = _prompt_overrides(r, raw, path)
    custody, public_key = _key_custody(r, raw, path)
    if len(r.errors) != errors_before:
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


def _key_custody(r: Reader, raw: Mapping[str, Any], path: str) -> tuple[str, bytes | None]:
    custody = r.get(raw, path, "key_custody", check.choice(CUSTODY_MODES, "key custody"), "local")
    public_key = r.get(raw, path, "public_key", check.public_key, None)
    if custody == "public_key" and public_key is None:
        r.error(
            join(path, "public_key"),
            'required with key_custody = "public_key" (base64 of the raw 32-byte X25519 '
            "public key, as `ivr keys generate` prints it)",
        )
    elif custody == "local" and "public_key" in raw:
        r.error(
            join(path, "public_key"),
            'only used with key_custody = "public_key"; add that line to seal this '
            "tenant's recordings to the key, or remove public_key",
        )
    return custody, public_key if custody == "public_key" else None


def _prompt_overrides(r: Reader, raw: Mapping[str, Any], path: str) -> list[PromptOverride]:
    prompts = r.table(raw, path, "prompts")
    prompts_path = join(path, "prompts")
    out: list[PromptOverride] = []
    for language, by_id in prompts.items():
        lang_path = join(prompts_path, language)
        if language not in PROMPT_LANGUAGES:
            r.error(
                prompts_path,
                f"unknown prompt language {language!r}{suggest(language, PROMPT_LANGUAGES)} "
                f"(one of {quote(PROMPT_LANGUAGES)})",
            )
            continue
        if not isinstance(by_id, dict):
            r.error(lang_path, f"expected a table of prompts, got {describe(by_id)}")
            continue
        for prompt_id, spec in by_id.items():
            here = join(lang_path, prompt_id)
            if prompt_id not in PROMPT_IDS:
                r.error(
                    lang_path,
                    f"unknown prompt {prompt_id!r}{suggest(prompt_id, PROMPT_IDS)} "
                    f"(one of {quote(PROMPT_IDS)})",
                )
                continue
            if not isinstance(spec, dict):
                r.error(
                    here,
                    f"expected a table with file and text, got {describe(spec)} (write "
                    f'{here} = {{ file = "...", text = "..." }})',
                )
                continue
            r.check_keys(spec, here, FILE_TABLES["tenants.<id>.prompts.<language>.<prompt>"])
            file = r.get(spec, here, "file", lambda value: _prompt_file(r, value))
            text = r.get(spec, here, "text", check.string)
            promise = _promise(r, spec, here)
            if ok(file, text) and promise is not None:
                out.append(PromptOverride(language, prompt_id, file, text, promise))
    return out


def _promise(r: Reader, spec: Mapping[str, Any], path: str) -> Promise | None:
    """The ``promise`` table of a tenant's prompt: what its words commit the service to."""
    raw = r.table(spec, path, "promise")
    here = join(path, "promise")
    errors_before = len(r.errors)
    r.check_keys(raw, here, FILE_TABLES["tenants.<id>.prompts.<language>.<prompt>.promise"])
    withdraw = r.get(raw, here, "withdraw", check.withdraw_channel, None)
    promise = Promise(
        lawful_basis=r.get(raw, here, "lawful_basis", check.lawful_basis, None),
        purpose=r.get(raw, here, "purpose", check.string, None),
        withdraw=withdraw,
        deletes_on_withdraw=r.get(raw, here, "deletes_on_withdraw", check.boolean, None),
        accept_key=r.get(raw, here, "accept_key", check.dtmf_key, None),
        decline_key=r.get(raw, here, "decline_key", check.dtmf_key, None),
        withdraw_key=r.get(raw, here, "withdraw_key", check.dtmf_key, None),
    )
    return promise if len(r.errors) == errors_before else None


def _prompt_file(r: Reader, value: Any) -> Path:
    """A prompt's audio file, relative to the configuration file's directory; it must exist."""
    name = check.string(value)
    resolved = (r.base_dir / Path(name).expanduser()).resolve()
    if not resolved.exists():
        raise Invalid(f"file not found: {resolved}")
    if not resolved.is_file():
        raise Invalid(f"not a file: {resolved}")
    return resolved


def _head_file(r: Reader, value: Any) -> Path:
    """The audit heads file, relative to the configuration file's directory; its directory
    must exist (the file is created at the first publication)."""
    name = check.string(value)
    resolved = (r.base_dir / Path(name).expanduser()).resolve()
    if not resolved.parent.is_dir():
        raise Invalid(f"no such directory: {resolved.parent}")
    if resolved.is_dir():
        raise Invalid(f"a directory, not a file: {resolved}")
    return resolved


def _same_database(a: str, b: str) -> bool:
    """Whether two postgresql:// URLs name one database (host, port and database name)."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port or 5432, pa.path.strip("/")) == (
        pb.hostname,
        pb.port or 5432,
        pb.path.strip("/"),
    )
