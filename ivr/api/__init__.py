"""The admin HTTP API (``/api/v1``): bearer tokens per tenant and role, tenant isolation.

``routes``: the handlers and their access rules; ``calls``: live calls (the agent's withdrawal);
``spec``: the OpenAPI document, kept equal to the registered routes by a test. docs/api.md
describes them.
"""

from aiohttp import web

from ivr.api import calls
from ivr.api.routes import (
    AUDIO_ROLES,
    DPO_ONLY,
    READ_ROLES,
    REFUSALS_KEY,
    ROLES,
    TENANTS_KEY,
    TOKENS_KEY,
    ApiToken,
    configure,
    flush_refusals,
    flush_refusals_every,
    token_digest,
)
from ivr.api.routes import add_routes as _add_recording_routes


def add_routes(app: web.Application) -> None:
    """Every route of ``/api/v1``; ``configure`` gives them their tokens and tenants."""
    _add_recording_routes(app)
    calls.add_routes(app)


__all__ = [
    "AUDIO_ROLES",
    "DPO_ONLY",
    "READ_ROLES",
    "REFUSALS_KEY",
    "ROLES",
    "TENANTS_KEY",
    "TOKENS_KEY",
    "ApiToken",
    "add_routes",
    "configure",
    "flush_refusals",
    "flush_refusals_every",
    "token_digest",
]
