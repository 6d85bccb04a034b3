"""The access log says what the service chooses: no query string (free text, such as a
playback's reason), a bounded path with nothing unprintable, as `ivr serve` serves."""

from __future__ import annotations

import logging
import re

import aiohttp
import pytest
from aiohttp import web

from ivr import serving
from ivr.access_log import MAX_PATH_CHARS, loggable_path
from ivr.config import Limits


async def test_a_served_request_is_logged_without_its_query(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="aiohttp.access")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/api/v1/recordings/{rid}/audio", hello)
    served = await serving.start(app, host="127.0.0.1", port=0, limits=Limits())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{served.port}/api/v1/recordings/rec_1/audio"
            async with session.get(url, params={"reason": "complaint from Anna Svensson"}) as r:
                assert r.status == 200
            async with session.get(f"http://127.0.0.1:{served.port}/nowhere?x=1") as r:
                assert r.status == 404
    finally:
        await served.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 2, lines
    # address "method path" status, bytes sent (headers and body), time taken
    assert re.fullmatch(
        r'127\.0\.0\.1 "GET /api/v1/recordings/rec_1/audio" 200 \d+ [\d.]+ ms', lines[0]
    )
    assert re.fullmatch(r'127\.0\.0\.1 "GET /nowhere" 404 \d+ [\d.]+ ms', lines[1])
    assert not any("Anna" in line or "reason" in line or "?" in line for line in lines)


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/twilio/voice", "/twilio/voice"),
        ("/twilio/voice?From=%2B46701234567", "/twilio/voice"),
        ('/a"b', "/a\\x22b"),  # no quote to end the request's part of the line early
        ("/a\nfake line", "/a\\nfake line"),
        ("/\x1b[31mred", "/\\x1b[31mred"),
        ("/ä", "/ä"),  # printable: kept
    ],
)
def test_loggable_path(raw: str, logged: str) -> None:
    assert loggable_path(raw) == logged


def test_a_long_path_is_cut_and_says_so() -> None:
    out = loggable_path("/" + "x" * 10_000 + "?q=1")
    assert out == "/" + "x" * (MAX_PATH_CHARS - 1) + "..."
