"""The admin HTTP API, ``/api/v1``: recordings, legal holds, subject requests, retention.

Every request carries ``Authorization: Bearer <token>``. The configuration holds only the
SHA-256 of each token, with the tenant it belongs to and its role:

- ``dpo``: everything for its tenant, subject requests and erasure included;
- ``supervisor``: list and show recordings, and play them (audited, with a reason);
- ``admin``: list and show recordings' metadata and the retention report; no audio;
- ``agent``: only stop a live call's recording for the caller who asked (``ivr.api.calls``).

A token of tenant A never sees anything of tenant B: another tenant's recording answers 404,
exactly like one that does not exist. Every attempt is audited, refusals included; refusals of
requests without a valid token are audited in aggregate (``ivr.api.refusals``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from ivr.api.refusals import REPEATED_ACTION, RefusalLedger, short_target
from ivr.app_keys import CLOCK, CONFIG, VAULT
from ivr.config import Tenant
from ivr.gdpr.recording_files import decode_recording
from ivr.gdpr.subject import SubjectError, normalise_phone
from ivr.serving import BodyRefused, BodyTooLarge, read_body
from ivr.supervision import LoopHealth
from media.wavfile import wav_header
from storage import lifecycle
from storage.catalog import RecordingRow, RecordingStatus, UnknownRecording
from storage.errors import NotReadable, VaultError
from storage.files import utc_iso
from storage.vault import Vault

log = logging.getLogger(__name__)

ROLES = ("dpo", "supervisor", "admin", "agent")
READ_ROLES = frozenset({"dpo", "supervisor", "admin"})  # an agent sees no recordings
AUDIO_ROLES = frozenset({"dpo", "supervisor"})
DPO_ONLY = frozenset({"dpo"})


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    tenant: str
    role: str
    token_sha256: str
    expires: datetime | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    token: ApiToken

    @property
    def tenant(self) -> str:
        return self.token.tenant

    @property
    def actor(self) -> str:
        return f"api:{self.token.tenant}:{self.token.name}:{self.token.role}"


TOKENS_KEY = web.AppKey[dict[str, ApiToken]]("api_tokens")
TENANTS_KEY = web.AppKey[dict[str, Tenant]]("api_tenants")
REFUSALS_KEY = web.AppKey("api_refusals", RefusalLedger)

Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


_HTTP_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def _json_error(status: int, message: str, **headers: str) -> web.HTTPException:
    return _HTTP_ERRORS[status](
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


class Unauthenticated(Exception):
    """No valid token: answered 401 with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _authenticate(request: web.Request) -> Caller:
    tokens = request.app[TOKENS_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("a bearer token is required")
    digest = token_digest(value.strip())
    found = next((t for d, t in tokens.items() if hmac.compare_digest(d, digest)), None)
    if found is None:
        raise Unauthenticated("unknown token")
    now = request.app[CLOCK]()
    if found.expires is not None and now >= found.expires:
        raise Unauthenticated("token expired")
    return Caller(found)


def endpoint(roles: frozenset[str], action: str) -> Callable[[Handler], Route]:
    """Authenticate, authorise, audit every attempt, and turn vault errors into HTTP ones."""

    def wrap(handler: Handler) -> Route:
        async def run(request: web.Request) -> web.StreamResponse:
            vault = request.app[VAULT]
            target = request.match_info.get("recording_id") or request.match_info.get("call_id")
            try:
                caller = _authenticate(request)
            except Unauthenticated as exc:
                await _refused_unauthenticated(request, action, target, exc.reason)
                challenge = {"WWW-Authenticate": 'Bearer realm="ivr"'}
                raise _json_error(401, exc.reason, **challenge) from None
            if caller.token.role not in roles:
                await _audit(
                    vault, caller.actor, f"api.{action}.denied", caller.tenant, target, 403, {}
                )
                raise _json_error(403, f"role {caller.token.role!r} may not {action}")
            try:
                response = await handler(request, caller)
            except web.HTTPException as exc:
                if exc.status >= 400:
                    await _audit(
                        vault,
                        caller.actor,
                        f"api.{action}.refused",
                        caller.tenant,
                        target,
                        exc.status,
                        {},
                    )
                raise
            return response

        run.__name__ = handler.__name__
        return run

    return wrap


async def _refused_unauthenticated(
    request: web.Request, action: str, target: str | None, reason: str
) -> None:
    """The first such refusal of its source and reason in the window is audited now; the
    others are counted for the window's ``api.denied.repeated`` entry (``flush_refusals``)."""
    source = request.app[REFUSALS_KEY].note(request.remote, reason, action, target)
    if source is not None:
        detail = {"source": source, "reason": reason}
        await _audit(request.app[VAULT], "api", f"api.{action}.denied", None, target, 401, detail)


async def flush_refusals(app: web.Application) -> int:
    """Close the refusal window: one ``api.denied.repeated`` entry per source and reason that
    was refused more than once in it. How many entries were written."""
    repeated = app[REFUSALS_KEY].close_window()
    if repeated:
        vault = app[VAULT]

        def write() -> None:
            for r in repeated:
                vault.audit(actor="api", action=REPEATED_ACTION, detail=r.detail())

        await asyncio.to_thread(write)
    return len(repeated)


async def flush_refusals_every(app: web.Application, window: float, health: LoopHealth) -> None:
    """Close the refusal window every ``window`` seconds; a failed round is reported."""
    while True:
        await asyncio.sleep(window)
        try:
            await flush_refusals(app)
        except Exception as exc:  # the catalog may be failing (a full disk): next window
            health.round_failed(exc, "auditing refused API requests")
            continue
        health.round_ok()


async def _audit(
    vault: Vault,
    actor: str,
    action: str,
    tenant: str | None,
    target: str | None,
    status: int,
    detail: dict[str, Any],
) -> None:
    await asyncio.to_thread(
        vault.audit,
        actor=actor,
        action=action,
        tenant=tenant,
        target=short_target(target),  # an id from the URL: whatever the client sent
        detail={"status": status, **detail},
    )


async def _own_recording(request: web.Request, caller: Caller) -> Any:
    vault = request.app[VAULT]
    rid = request.match_info["recording_id"]
    try:
        row = await asyncio.to_thread(vault.get, rid)
    except UnknownRecording:
        raise _json_error(404, f"no recording {rid}") from None
    if row.tenant != caller.tenant:  # indistinguishable from a recording that does not exist
        raise _json_error(404, f"no recording {rid}")
    return row


def _reason(request: web.Request, body: Mapping[str, Any] | None = None) -> str:
    reason = (body or {}).get("reason") or request.query.get("reason") or ""
    if not isinstance(reason, str) or not reason.strip():
        raise _json_error(400, "a reason is required (it goes into the audit log)")
    return reason.strip()[:500]


MAX_BODY_BRACKETS = 32  # a request body is one flat object; this bounds its nesting
# A body is a reason, a phone number, a note: a few hundred bytes. Bounded while it is read.
MAX_BODY_BYTES = 64 * 1024


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        raw = await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_BYTES,
            actual_size=exc.size,
            text=json.dumps({"error": f"the body is larger than {MAX_BODY_BYTES} bytes"}),
            content_type="application/json",
        ) from None
    except BodyRefused as exc:
        raise _json_error(400, str(exc)) from None
    try:
        text = raw.decode()
        # Nesting is bounded before json.loads (5,000 "[" would reach its recursion limit).
        if text.count("[") + text.count("{") > MAX_BODY_BRACKETS:
            raise ValueError("nested too deeply")
        body = json.loads(text, parse_constant=_no_constant)
    except ValueError:  # not UTF-8, not JSON, NaN or Infinity, nested too deeply
        raise _json_error(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _json_error(400, "the body must be a JSON object")
    return body


# -- handlers -------------------------------------------------------------------------------------
@endpoint(READ_ROLES, "list")
async def list_recordings(request: web.Request, caller: Caller) -> web.Response:
    vault = request.app[VAULT]
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in RecordingStatus}:
        raise _json_error(400, f"unknown status {status!r}")
    limit = request.query.get("limit", "100")
    # ASCII digits only: str.isdigit also takes "²", which int() refuses.
    if not (0 < len(limit) <= 4 and limit.isascii() and limit.isdigit()) or not (
        1 <= int(limit) <= 1000
    ):
        raise _json_error(400, "limit must be 1..1000")
    rows = await asyncio.to_thread(
        vault.list,
        tenant=caller.tenant,
        status=RecordingStatus(status) if status else None,
        limit=int(limit),
    )
    return web.json_response({"recordings": [r.public() for r in rows]})


@endpoint(READ_ROLES, "show")
async def show_recording(request: web.Request, caller: Caller) -> web.Response:
    row = await _own_recording(request, caller)
    return web.json_response(row.public())


@endpoint(AUDIO_ROLES, "export")
async def recording_audio(request: web.Request, caller: Caller) -> web.StreamResponse:
    vault = request.app[VAULT]
    row = await _own_recording(request, caller)
    reason = _reason(request)

    try:
        samples = await asyncio.to_thread(decode_recording, vault, row)
    except NotReadable as exc:
        raise _json_error(409, str(exc)) from None
    await _audit(
        vault,
        caller.actor,
        "recording.exported",
        caller.tenant,
        row.id,
        200,
        {"format": "wav", "reason": reason, "via": "api"},
    )
    # Header, then the samples straight from the decoded array: no second copy of the file.
    header = wav_header(samples.shape[0], samples.shape[1], row.sample_rate)
    body = samples.astype("<i2", copy=False).data.cast("B")  # WAV is little-endian
    response = web.StreamResponse(
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="{row.id}.wav"',
            "Content-Length": str(len(header) + len(body)),
        }
    )
    size, sent = len(header) + len(body), 0
    try:
        await response.prepare(request)
        await response.write(header)
        sent = len(header)
        for start in range(0, len(body), 1 << 16):
            piece = body[start : start + (1 << 16)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-download. The entry above says an export began; this one
        # says it did not finish, so a DPO reading the log is not told more than happened.
        # aiohttp would log a traceback for the raise; the prepared response is returned
        # instead, and aiohttp drops the connection.
        log.info(
            "recording %s: the WAV download was cut short by the client after %d of %d bytes",
            row.id,
            sent,
            size,
        )
        await _audit(
            vault,
            caller.actor,
            "recording.export_cut_short",
            caller.tenant,
            row.id,
            200,
            {"bytes_handed_over": sent, "bytes": size, "reason": reason, "via": "api"},
        )
    return response


async def _change(request: web.Request, caller: Caller, operation: Any) -> web.Response:
    """One lifecycle operation on one of the caller's recordings, with the reason given."""
    vault = request.app[VAULT]
    row = await _own_recording(request, caller)
    reason = _reason(request, await _body(request))
    try:
        changed = await asyncio.to_thread(
            operation, vault, row.id, reason=reason, actor=caller.actor
        )
    except VaultError as exc:  # a legal hold, a recording in progress, nothing held
        raise _json_error(409, str(exc)) from None
    return web.json_response(changed.public())


@endpoint(DPO_ONLY, "delete")
async def delete_recording(request: web.Request, caller: Caller) -> web.Response:
    return await _change(request, caller, lifecycle.erase)


@endpoint(DPO_ONLY, "hold")
async def hold_recording(request: web.Request, caller: Caller) -> web.Response:
    return await _change(request, caller, lifecycle.set_hold)


@endpoint(DPO_ONLY, "release")
async def release_recording(request: web.Request, caller: Caller) -> web.Response:
    return await _change(request, caller, lifecycle.release_hold)


def _phone(body: Mapping[str, Any]) -> str:
    phone, region = body.get("phone"), body.get("region")
    if not isinstance(phone, str) or (region is not None and not isinstance(region, str)):
        raise _json_error(400, "phone (and optional region) must be strings")
    try:
        return normalise_phone(phone, region)
    except SubjectError as exc:
        raise _json_error(400, str(exc)) from None


@endpoint(DPO_ONLY, "subject_erase")
async def subject_erase(request: web.Request, caller: Caller) -> web.Response:
    from ivr.gdpr import subject

    vault = request.app[VAULT]
    body = await _body(request)
    phone, reason = _phone(body), _reason(request, body)
    report = await asyncio.to_thread(
        subject.erase, vault, phone, [caller.tenant], reason=reason, actor=caller.actor
    )
    return web.json_response(
        {
            "erased": report.erased,
            "held": [{"id": rid, "reason": why} for rid, why in report.held],
            "skipped": [{"id": rid, "reason": why} for rid, why in report.skipped],
            # Removed here; still in the platform's call log until erased there.
            "platform_calls": [{"platform": p, "id": cid} for p, cid in report.platform_calls],
        }
    )


@endpoint(DPO_ONLY, "subject_export")
async def subject_export(request: web.Request, caller: Caller) -> web.StreamResponse:
    from ivr.gdpr import subject

    vault = request.app[VAULT]
    body = await _body(request)
    phone, reason = _phone(body), _reason(request, body)
    language = body.get("language")
    if language not in (None, "en", "sv"):
        raise _json_error(400, "language must be en or sv")

    def build() -> bytes:
        # In memory: the zip holds recordings in clear, so it never touches the disk here.
        return subject.export_bytes(
            vault,
            phone,
            [caller.tenant],
            actor=caller.actor,
            reason=reason,
            config=request.app[CONFIG],
            language=language,
            now=utc_iso(request.app[CLOCK]()),
        )

    try:
        data = await asyncio.to_thread(build)
    except NotReadable as exc:  # e.g. a blob gone missing (sealed recordings are held, sealed)
        raise _json_error(409, str(exc)) from None
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": 'attachment; filename="subject-access.zip"',
        },
    )


@endpoint(frozenset({"dpo", "admin"}), "retention")
async def retention_report(request: web.Request, caller: Caller) -> web.Response:
    vault = request.app[VAULT]
    now = utc_iso(request.app[CLOCK]())
    rows = await asyncio.to_thread(vault.list, tenant=caller.tenant)
    kept = [r for r in rows if r.status in (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE)]
    # Each kept recording that has a retention date, with that date, soonest first.
    live = sorted(((r.retention_until, r) for r in kept if r.retention_until), key=lambda d: d[0])
    brief = [_retention_entry(r, until) for until, r in live]
    return web.json_response(
        {
            "now": now,
            "kept": len(live),
            "overdue": [
                _retention_entry(r, until) for until, r in live if until <= now and not r.legal_hold
            ],
            "held": [_retention_entry(r, until) for until, r in live if r.legal_hold],
            # Kept with no retention date: a storage-limitation finding for the DPO.
            "without_retention_date": [r.id for r in kept if not r.retention_until],
            "recordings": brief,
        }
    )


def _retention_entry(row: RecordingRow, until: str) -> dict[str, object]:
    return {
        "id": row.id,
        "lawful_basis": row.lawful_basis,
        "retention_until": until,
        "legal_hold": row.legal_hold,
    }


async def openapi(request: web.Request) -> web.Response:
    from ivr.api.spec import OPENAPI

    return web.json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    """The routes; ``configure`` gives them their vault, tokens and tenants at start-up."""
    r = app.router
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/recordings", list_recordings)
    r.add_get("/api/v1/recordings/{recording_id}", show_recording)
    r.add_get("/api/v1/recordings/{recording_id}/audio", recording_audio)
    r.add_delete("/api/v1/recordings/{recording_id}", delete_recording)
    r.add_post("/api/v1/recordings/{recording_id}/hold", hold_recording)
    r.add_delete("/api/v1/recordings/{recording_id}/hold", release_recording)
    r.add_post("/api/v1/subject/export", subject_export)
    r.add_post("/api/v1/subject/erase", subject_erase)
    r.add_get("/api/v1/retention", retention_report)


def configure(
    app: web.Application, *, tokens: Mapping[str, ApiToken], tenants: Mapping[str, Tenant]
) -> None:
    """The API's own settings; the vault and clock are the service's (ivr.app_keys)."""
    app[TOKENS_KEY] = dict(tokens)
    app[TENANTS_KEY] = dict(tenants)
    app[REFUSALS_KEY] = RefusalLedger()
