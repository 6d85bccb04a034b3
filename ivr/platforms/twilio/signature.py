"""``X-Twilio-Signature``: computing and checking Twilio's webhook signature.

The signature is base64(HMAC-SHA1(auth token, URL ‖ sorted form parameters)), where the URL is
the public one Twilio requested. Twilio is inconsistent about default ports, so a signature is
accepted if it matches the URL with or without ``:443`` / ``:80``. The same function signs
requests in the simulated-call harness, so the two ends cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_SIGNATURE_CHARS = 64  # base64 of a 20-byte HMAC-SHA1 is 28
_DEFAULT_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80}


def signing_payload(url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """URL followed by ``name + value`` for each form parameter, names then values sorted."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    out = [url]
    for name in sorted({n for n, _ in items}):
        out.extend(name + value for value in sorted(v for n, v in items if n == name))
    # surrogateescape: a URL or header read with undecodable bytes is signed over those bytes.
    return "".join(out).encode("utf-8", "surrogateescape")


def compute_signature(
    auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
) -> str:
    digest = hmac.new(
        auth_token.encode("utf-8", "surrogateescape"), signing_payload(url, params), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> list[str]:
    """The URL as given plus the same URL with its default port added or removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def is_valid_signature(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    signature: str | None,
) -> bool:
    if not signature or not auth_token:
        return False
    # hmac.compare_digest takes only ASCII text; a signature is base64, so anything else is
    # simply not one (and never a TypeError and an HTTP 500).
    if len(signature) > MAX_SIGNATURE_CHARS or not signature.isascii():
        return False
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, items), signature)
        for candidate in url_variants(url)
    )
