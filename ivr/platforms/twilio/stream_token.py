"""Short-lived per-call tokens that admit a Media Streams websocket.

Whether Twilio signs the websocket upgrade is not documented, so the service authenticates the
stream itself: the TwiML that opens a stream carries a token as a ``<Parameter>``, and the
stream's ``start`` message must bring it back for the same call, for the same kind of stream,
before it expires. A token is ``v1.<kind>.<expiry>.<mac>`` with
``mac = base64url(HMAC-SHA256(secret, "v1|kind|call_sid|expiry"))``. The service's secret is
derived from the master key (:data:`KEY_PURPOSE`), so any of its processes, on any node with
that key, can check a token another issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("consent", "recording")
KEY_PURPOSE = "twilio stream tokens"  # the service key the secret is (storage/keys.py)
MAX_TOKEN_CHARS = 128  # v1.recording.<10 digits>.<43 characters>: 68
MAX_EXPIRY_DIGITS = 12


class TokenError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StreamTokens:
    secret: bytes
    ttl_seconds: int

    @classmethod
    def from_key(cls, service_key: Callable[[str], bytes], ttl_seconds: int) -> StreamTokens:
        """Tokens under the service key for :data:`KEY_PURPOSE` (``Keyring.service_key``)."""
        return cls(service_key(KEY_PURPOSE), ttl_seconds)

    def _mac(self, kind: str, call_sid: str, expiry: int) -> str:
        msg = f"v1|{kind}|{call_sid}|{expiry}".encode()
        digest = hmac.new(self.secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, kind: str, call_sid: str, now: float) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown stream kind {kind!r}")
        expiry = int(now) + self.ttl_seconds
        return f"v1.{kind}.{expiry}.{self._mac(kind, call_sid, expiry)}"

    def verify(self, token: str | None, kind: str, call_sid: str, now: float) -> None:
        """Raise TokenError saying why ``token`` does not admit this stream."""
        if not token:
            raise TokenError("no stream token")
        # ASCII only: str.isdigit takes "²" (which int() refuses) and hmac.compare_digest
        # raises TypeError on non-ASCII text.
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise TokenError("malformed stream token")
        parts = token.split(".")
        if (
            len(parts) != 4
            or parts[0] != "v1"
            or not 0 < len(parts[2]) <= MAX_EXPIRY_DIGITS
            or not parts[2].isdigit()
        ):
            raise TokenError("malformed stream token")
        _, token_kind, expiry_text, mac = parts
        if token_kind not in KINDS:
            raise TokenError("malformed stream token")
        if token_kind != kind:
            raise TokenError(f"a {token_kind} token cannot open a {kind} stream")
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac, self._mac(kind, call_sid, expiry)):
            raise TokenError("stream token does not belong to this call")
        if now > expiry:
            raise TokenError("stream token expired")
