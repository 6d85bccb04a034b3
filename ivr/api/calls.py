"""Live calls in the admin API: the agent's withdrawal on the caller's behalf.

Where a platform cannot carry the caller's keys after the call is forwarded (Twilio's one-way
recording stream; ivr.capabilities), the caller is told to ask the agent to stop the recording.
``POST /api/v1/calls/{call_id}/withdraw`` is how the agent (or their supervisor, or the DPO) does
it: the same step as the withdraw key (the recording stops and is discarded or kept as the line
says), recorded in the consent evidence as withdrawn by the agent, and audited with the token.
``ivr calls withdraw`` calls it from the command line.
"""

from __future__ import annotations

from aiohttp import web

from ivr.api.routes import Caller, _audit, _body, _json_error, endpoint
from ivr.app_keys import CALLS, VAULT
from ivr.calls import NotWithdrawable, withdraw_for_caller

WITHDRAW_ROLES = frozenset({"agent", "supervisor", "dpo"})
MAX_NOTE = 500


@endpoint(WITHDRAW_ROLES, "withdraw")
async def withdraw_call(request: web.Request, caller: Caller) -> web.Response:
    call_id = request.match_info["call_id"]
    body = await _body(request)
    note = body.get("note", "")
    if not isinstance(note, str):
        raise _json_error(400, "note must be a string")
    call = request.app[CALLS].by_call_id(call_id)
    if call is None or call.line.tenant != caller.tenant:  # another tenant's call: not there
        raise _json_error(404, f"no call {call_id} in progress")
    try:
        withdrawn = await withdraw_for_caller(call, "agent")
    except NotWithdrawable as exc:
        raise _json_error(409, str(exc)) from None
    row = withdrawn.recording
    result = {
        "call_id": call_id,
        "withdrawn": True,
        "recording_id": row.id if row else None,
        "recording_status": row.status.value if row else None,
    }
    detail = {**result, "note": note.strip()[:MAX_NOTE]}
    await _audit(
        request.app[VAULT], caller.actor, "api.withdraw", caller.tenant, call_id, 200, detail
    )
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/calls/{call_id}/withdraw", withdraw_call)
