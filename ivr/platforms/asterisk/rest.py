"""ARI's REST half: one JSON request at a time, errors as ``AriHttpError`` with the status."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import aiohttp

from ivr.config import AsteriskSettings
from ivr.platforms.asterisk import ari

REST_TIMEOUT = 10.0


def basic_auth(settings: AsteriskSettings) -> str:
    token = f"{settings.username}:{settings.password or ''}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


class AriHttpError(Exception):
    def __init__(self, status: int, message: str, request: ari.Request) -> None:
        super().__init__(f"{request.method} {request.path}: {status} {message}")
        self.status = status


class AriRest:
    """The REST half of ARI: one request at a time per call, JSON in and out."""

    def __init__(self, session: aiohttp.ClientSession, settings: AsteriskSettings) -> None:
        self._session = session
        self._base = settings.url
        self._headers = {"Authorization": basic_auth(settings)}

    async def __call__(self, request: ari.Request) -> Any:
        try:
            async with self._session.request(
                request.method,
                self._base + request.path,
                params=dict(request.query),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    message = body.decode(errors="replace")[:200]
                    with contextlib.suppress(ValueError, AttributeError):
                        message = str(json.loads(body).get("message", message))
                    raise AriHttpError(resp.status, message, request)
                if not body:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError:
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriHttpError(0, f"ARI unreachable: {exc}", request) from None
