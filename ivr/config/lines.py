"""The ``[[lines]]`` of a file: each line's policy, checked against the lawful basis and prompts.

A line is where the GDPR rules meet the file: its consent mode must be allowed for its lawful
basis (:mod:`ivr.policy`), its keys must be the ones its opening prompt names, and lines that
share a policy id must share its terms, since consent evidence names the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ivr.config import checks as check
from ivr.config.checks import Invalid, describe, join, quote, suggest, wrong_type
from ivr.config.model import (
    DEFAULT_KEYS,
    DEFAULT_LANGUAGE,
    DEFAULT_POLICY_VERSION,
    DEFAULT_PROMPT_TIMEOUT_SECONDS,
    FILE_TABLES,
    MAX_RECORDING_SECONDS,
    MAX_RETENTION_DAYS,
    MODE_PROMPT,
    POLICY_TERMS,
    PROMPT_KEYS,
    PROMPT_LANGUAGES,
    Line,
)
from ivr.config.reader import Reader, ok
from ivr.policy import (
    DEFAULT_MODE,
    DISCARD_ON_WITHDRAW_DEFAULT,
    ConsentMode,
    LawfulBasis,
    mode_error,
)

# What a key does, for the "the built-in prompt says 'press 1'" error.
_KEY_ACTIONS = {
    "accept_key": "to accept",
    "decline_key": "to decline",
    "withdraw_key": "to stop the recording",
}


def read_lines(
    r: Reader,
    data: Mapping[str, Any],
    *,
    tenant_ids: tuple[str, ...],
    tenant_retention: Mapping[str, Mapping[LawfulBasis, int]],
    declared_prompts: Mapping[str, set[tuple[str, str]]],
    max_recording: int,
    retention_defaults: Mapping[LawfulBasis, int],
) -> dict[str, Line]:
    """Every line by E.164 number; ``tenant_retention`` is what each tenant sets itself."""
    raw_lines = data.get("lines", [])
    if isinstance(raw_lines, dict):
        r.error("lines", "expected an array of tables: write each line as [[lines]]")
        return {}
    if not isinstance(raw_lines, list):
        r.error("lines", f"expected an array of tables ([[lines]]), got {describe(raw_lines)}")
        return {}

    def tenant_ref(value: Any) -> str:
        if not isinstance(value, str):
            raise wrong_type("a string", value)
        if value not in tenant_ids:
            known = f" (configured: {quote(tenant_ids)})" if tenant_ids else ""
            raise Invalid(f"no tenant {value!r} in [tenants]{suggest(value, tenant_ids)}{known}")
        return value

    lines: dict[str, Line] = {}
    first_use: dict[str, tuple[int, str]] = {}
    policies: dict[tuple[str, int], tuple[int, Line]] = {}
    for index, raw in enumerate(raw_lines):
        path = join("lines", index)
        if not isinstance(raw, dict):
            r.error(path, f"expected a table ([[lines]]), got {describe(raw)}")
            continue
        line = _line(
            r,
            raw,
            path,
            tenant_ref=tenant_ref,
            tenant_retention=tenant_retention,
            declared_prompts=declared_prompts,
            max_recording=max_recording,
            retention_defaults=retention_defaults,
        )
        # A broken line still takes part in duplicate detection, so both problems show at once.
        number = (
            line.number if line else r.get(raw, path, "number", check.phone_number_or_none, None)
        )
        if isinstance(number, str):
            if number in first_use:
                other, written = first_use[number]
                r.error(
                    join(path, "number"),
                    f"{raw['number']!r} is {number}, already the number of lines[{other}] "
                    f"(written {written!r}); a number can have only one line",
                )
                continue
            first_use[number] = (index, raw["number"])
        if line is None:
            continue
        lines[line.number] = line
        _check_policy(r, line, index, policies)
    return lines


def _check_policy(
    r: Reader, line: Line, index: int, policies: dict[tuple[str, int], tuple[int, Line]]
) -> None:
    """One policy_id + policy_version must mean the same terms wherever it is used."""
    key = (line.policy_id, line.policy_version)
    if key not in policies:
        policies[key] = (index, line)
        return
    other_index, other = policies[key]
    for name in POLICY_TERMS:
        mine, theirs = getattr(line, name), getattr(other, name)
        if mine != theirs:
            r.error(
                join(join("lines", index), "policy_id"),
                f"policy {line.policy_id!r} version {line.policy_version} is also used by "
                f"lines[{other_index}] with {name} {str(theirs)!r}, not {str(mine)!r}; "
                "give this line its own policy_id, since consent evidence names the policy",
            )
            return


def _line(
    r: Reader,
    raw: Mapping[str, Any],
    path: str,
    *,
    tenant_ref: Callable[[Any], str],
    tenant_retention: Mapping[str, Mapping[LawfulBasis, int]],
    declared_prompts: Mapping[str, set[tuple[str, str]]],
    max_recording: int,
    retention_defaults: Mapping[LawfulBasis, int],
) -> Line | None:
    errors_before = len(r.errors)
    r.check_keys(raw, path, FILE_TABLES["lines"])
    number = r.get(raw, path, "number", check.phone_number)
    tenant = r.get(raw, path, "tenant", tenant_ref)
    purpose = r.get(raw, path, "purpose", check.string)
    basis = r.get(raw, path, "lawful_basis", check.lawful_basis)
    mode = r.get(raw, path, "consent_mode", check.consent_mode, None)
    if ok(basis, mode):
        if mode is None:
            mode = DEFAULT_MODE[basis]
        elif problem := mode_error(basis, mode):
            r.error(join(path, "consent_mode"), problem)
    language = r.get(
        raw, path, "language", check.choice(PROMPT_LANGUAGES, "language"), DEFAULT_LANGUAGE
    )

    keys = {
        name: r.get(raw, path, name, check.dtmf_key, DEFAULT_KEYS[name]) for name in DEFAULT_KEYS
    }
    names = list(keys)
    for i, name in enumerate(names):
        for earlier in names[:i]:
            if ok(keys[name], keys[earlier]) and keys[name] == keys[earlier]:
                r.error(
                    join(path, name),
                    f"{keys[name]!r} is also the {earlier}; the accept, decline and withdraw "
                    "keys must all differ",
                )
    if ok(mode, language, tenant) and mode is not None:
        _check_prompt_keys(r, path, tenant, mode, language, keys, declared_prompts)

    timeout = r.get(
        raw,
        path,
        "prompt_timeout_seconds",
        check.number(1, 60),
        DEFAULT_PROMPT_TIMEOUT_SECONDS,
    )
    retention = r.get(
        raw,
        path,
        "retention_days",
        check.integer(
            1,
            MAX_RETENTION_DAYS,
            hint=" (a line has one lawful basis, so its retention_days is one number)",
        ),
        None,
    )
    forward_to = r.get(raw, path, "forward_to", check.forward_target, None)
    if ok(number) and forward_to is not None and forward_to == number:
        r.error(
            join(path, "forward_to"),
            f"{forward_to} is the line's own number; the call would loop back to this line",
        )
    max_seconds = r.get(
        raw,
        path,
        "max_recording_seconds",
        check.integer(1, MAX_RECORDING_SECONDS),
        max_recording,
    )
    policy_id = r.get(raw, path, "policy_id", check.policy_id, None)
    policy_version = r.get(raw, path, "policy_version", check.integer(1), DEFAULT_POLICY_VERSION)
    discard = r.get(raw, path, "discard_on_withdraw", check.boolean, None)

    if len(r.errors) != errors_before:
        return None
    if retention is None:
        retention = tenant_retention.get(tenant, {}).get(basis, retention_defaults[basis])
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


def _check_prompt_keys(
    r: Reader,
    path: str,
    tenant: str,
    mode: ConsentMode,
    language: str,
    keys: Mapping[str, Any],
    declared_prompts: Mapping[str, set[tuple[str, str]]],
) -> None:
    """A key other than the default needs the tenant's own recording of the prompt naming it."""
    prompt_id = MODE_PROMPT[mode]
    if prompt_id is None or (language, prompt_id) in declared_prompts.get(tenant, set()):
        return
    for name in PROMPT_KEYS.get(prompt_id, ()):
        value, default = keys[name], DEFAULT_KEYS[name]
        if not ok(value) or value == default:
            continue
        action = (
            "to object"
            if name == "decline_key" and prompt_id == "objection_notice"
            else _KEY_ACTIONS[name]
        )
        r.error(
            join(path, name),
            f"the built-in {prompt_id} prompt in {language!r} says 'press {default}' "
            f"{action}; provide your own prompt for "
            f"{join(join(join(join('tenants', tenant), 'prompts'), language), prompt_id)} "
            f"or use {name} = '{default}'",
        )
