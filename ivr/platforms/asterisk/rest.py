"""ARI's REST half: one JSON request at a time, errors as ``AriHttpError`` with the status."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from ivr.config import AsteriskSettings
from ivr.platforms.asterisk import ari

REST_TIMEOUT = 10.0


class AriHttpError(Exception):
    def __init__(self, status: int, message: str, request: ari.Request) -> None:
        super().__init__(f"{request.method} {request.path}: {status} {message}")
        self.status = status


class AriRest:
    """The REST half of ARI: one request at a time per call, JSON in and out."""

    def __init__(self, session: aiohttp.ClientSession, settings: AsteriskSettings) -> None:
        self._session = session
        self._base = settings.url
        token = f"{settings.username}:{settings.password or ''}".encode()
        # Basic authentication, for the events websocket too.
        self.headers = {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}

    async def __call__(self, request: ari.Request) -> Any:
        try:
            async with self._session.request(
                request.method,
                self._base + request.path,
                params=dict(request.query),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT),
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriHttpError(0, f"ARI unreachable: {exc}", request) from None
        if resp.status >= 400:
            raise AriHttpError(resp.status, ari.error_message(body), request)
        return ari.response_json(body)
