"""The ``[[lines]]`` of a file: each line's policy, checked against the lawful basis and prompts.

A line is where the GDPR rules meet the file: its consent mode must be allowed for its lawful
basis (:mod:`ivr.policy`), its keys must be the ones its opening prompt names, and lines that
share a policy id must share its terms, since consent evidence names the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ivr.capabilities import PLATFORMS, channel_error
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
    POLICY_TERMS,
    PROMPT_LANGUAGES,
    Line,
    PromptOverride,
)
from ivr.config.reader import Reader, ok
from ivr.policy import (
    DEFAULT_MODE,
    DISCARD_ON_WITHDRAW_DEFAULT,
    LawfulBasis,
    mode_error,
)
from ivr.wording import PROMISING_PROMPTS, promise_of


def read_lines(
    r: Reader,
    data: Mapping[str, Any],
    *,
    tenant_ids: tuple[str, ...],
    tenant_retention: Mapping[str, Mapping[LawfulBasis, int]],
    tenant_prompts: Mapping[str, tuple[PromptOverride, ...]],
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
        _check_what_is_promised(r, line, path, tenant_prompts.get(line.tenant, ()))
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
    withdraw_via = r.get(raw, path, "withdraw_via", check.withdraw_channel, None)
    platforms = r.get(raw, path, "platforms", check.platform_names, tuple(PLATFORMS))

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
        withdraw_via=withdraw_via,
        platforms=platforms,
    )


def _check_what_is_promised(
    r: Reader, line: Line, path: str, overrides: tuple[PromptOverride, ...]
) -> None:
    """The caller must be promised only what the service does: a withdraw channel each of the
    line's platforms honours, and a tenant's own recording promising what this line does."""
    hands_off = line.forward_to is not None
    platforms = [PLATFORMS[name] for name in line.platforms]
    if line.withdraw_via is not None:
        for platform in platforms:
            problem = channel_error(
                platform, line.withdraw_via, withdrawable=line.withdrawable, hands_off=hands_off
            )
            if problem:
                r.error(
                    join(path, "withdraw_via"),
                    f"withdraw_via = {line.withdraw_via.value!r} cannot be honoured: {problem}",
                )
                return
    for override in overrides:
        if override.language != line.language or override.prompt_id not in PROMISING_PROMPTS:
            continue
        for platform in platforms:
            wanted = promise_of(line.terms(platform), override.prompt_id)
            if override.promise == wanted:
                continue
            where = join(
                join(join(join("tenants", line.tenant), "prompts"), line.language),
                override.prompt_id,
            )
            r.error(
                join(where, "promise"),
                f"the tenant's own {override.prompt_id} recording would be played on line "
                f"{line.number} over {platform.platform}, but it does not promise what that "
                f"line does ({'; '.join(override.promise.differences(wanted))}: declared vs "
                "the line); record a prompt that says what the line does, or change the line",
            )
            break
