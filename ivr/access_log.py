"""The access log: one line per HTTP request, made of what the service chooses to say.

aiohttp's default line repeats the request line as sent, query string included. Our query
strings carry free text (a playback's ``?reason=complaint from ...``), and a request line is
whatever a peer wrote, up to 8 KiB of it. So the line here names the peer's address, the
method, the path without its query, the status, the bytes sent (headers and body) and the time
taken. The path is cut to :data:`MAX_PATH_CHARS` and anything unprintable in it escaped, so a
hostile path can neither forge a line nor fill the log. Left out as well: a second timestamp
(the log's own format has one), the referrer and the user agent.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

MAX_PATH_CHARS = 160  # the longest of our own paths is under 80
MAX_METHOD_CHARS = 16  # aiohttp takes any token as a method; ours are at most 6 letters


def loggable_path(raw_path: str) -> str:
    """``raw_path`` without its query, bounded, every unprintable character escaped."""
    path = raw_path.partition("?")[0]
    cut = len(path) > MAX_PATH_CHARS
    if cut:
        path = path[:MAX_PATH_CHARS]
    if not path.isprintable() or '"' in path:
        path = path.encode("unicode_escape").decode("ascii").replace('"', "\\x22")
    return path + "..." if cut else path


class AccessLog(AbstractAccessLogger):
    """For ``web.AppRunner(access_log_class=AccessLog)``; aiohttp's format string is unused."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1f ms',
            request.remote or "-",
            request.method[:MAX_METHOD_CHARS],
            loggable_path(request.raw_path),
            response.status,
            response.body_length,
            time * 1000.0,
        )


__all__ = ["MAX_PATH_CHARS", "AccessLog", "loggable_path"]
