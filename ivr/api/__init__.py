"""The admin HTTP API (``/api/v1``): bearer tokens per tenant and role, tenant isolation.

``routes``: the handlers and their access rules; ``spec``: the OpenAPI document, kept equal to
the registered routes by a test. docs/api.md describes both.
"""

from ivr.api.routes import (
    AUDIO_ROLES,
    DPO_ONLY,
    READ_ROLES,
    ROLES,
    TENANTS_KEY,
    TOKENS_KEY,
    ApiToken,
    add_routes,
    configure,
    token_digest,
)

__all__ = [
    "AUDIO_ROLES",
    "DPO_ONLY",
    "READ_ROLES",
    "ROLES",
    "TENANTS_KEY",
    "TOKENS_KEY",
    "ApiToken",
    "add_routes",
    "configure",
    "token_digest",
]
