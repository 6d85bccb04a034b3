"""Public-key key custody: data keys sealed to a tenant's X25519 public key.

In this mode the controller keeps the private key and the service only ever sees the public key:
each recording's data key (and each caller number) is sealed to that public key with a fresh
ephemeral key pair, so the service can record but never decrypt what it recorded. Reading needs
the private key, given per command (``--private-key FILE``). Specified in docs/key-custody.md.

Wire format of a sealed value (a wrapped data key, a sealed caller number)::

    sealed = eph_pub (32) ‖ nonce (12) ‖ AES-256-GCM(k, nonce, plaintext, ad)
    k      = HKDF-SHA256(ikm = X25519(eph_priv, tenant_pub), salt = eph_pub ‖ tenant_pub,
                         info = "ivr dek x25519 v1" | "ivr caller x25519 v1", length 32)

with ``key_ref = "x25519/" + fingerprint(tenant_pub)``.

This module also re-wraps existing data keys (key rotation, a change of custody key).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.errors import NotReadable
from storage.files import open_private, private_dir
from storage.keys import (
    CustodyChange,
    KeyCustodyError,
    KeyringCorrupt,
    UnknownKey,
    caller_aad,
    dek_aad,
    fingerprint,
    open_value,
    seal_value,
    unwrap_dek,
    wrap_dek,
)

if TYPE_CHECKING:
    from storage.vault import Vault

log = logging.getLogger(__name__)

X25519_PREFIX = "x25519/"
PUBLIC_KEY_LEN = 32
DEK_INFO = b"ivr dek x25519 v1"
CALLER_INFO = b"ivr caller x25519 v1"
_NONCE = 12
_TAG = 16
SEALED_OVERHEAD = PUBLIC_KEY_LEN + _NONCE + _TAG
CUSTODY_MODES = ("local", "public_key")
PRIVATE_KEY_FILE = "private.pem"
PUBLIC_KEY_FILE = "public.pem"


class CustodyError(KeyCustodyError):
    """A public-key custody operation failed; the message is meant for an operator."""


class WrongPrivateKey(CustodyError):
    """The private key given is not the one a value was sealed to."""


class BadKeyFile(CustodyError):
    """A key file is missing, unreadable, or holds something that is not the key asked for."""


class PrivateKeyNeeded(NotReadable):
    """A recording or caller number is sealed to a public key and no private key was given."""


# -- keys ---------------------------------------------------------------------------------------
def key_ref_of(public_key: bytes) -> str:
    return X25519_PREFIX + fingerprint(public_key)


def is_x25519_ref(key_ref: str | None) -> bool:
    return key_ref is not None and key_ref.startswith(X25519_PREFIX)


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A new key pair: (private key, raw 32-byte public key)."""
    private = X25519PrivateKey.generate()
    return private, raw_public(private)


def raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def private_pem(private: X25519PrivateKey) -> bytes:
    """PEM PKCS#8, unencrypted: the file format ``ivr keys generate`` writes."""
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(public_key: bytes) -> bytes:
    return X25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_b64(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode("ascii")


def _b64_32(text: str) -> bytes | None:
    compact = "".join(text.split())
    for alt in (None, b"-_"):
        try:
            raw = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=alt, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == PUBLIC_KEY_LEN:
            return raw
    return None


def parse_public_key(text: str) -> bytes:
    """A tenant public key from the configuration: base64 of the raw 32 bytes, or a PEM
    SubjectPublicKeyInfo. Raises ``ValueError`` saying what is wrong."""
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise ValueError(
            "this is a private key: the service must never hold it. Put the public key here "
            "(`ivr keys generate` prints it) and keep the private key with the controller"
        )
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a readable PEM public key ({exc})") from None
        if not isinstance(key, X25519PublicKey):
            raise ValueError(
                f"is a {type(key).__name__.removeprefix('_')} key; key custody needs an X25519 "
                "key (`ivr keys generate` makes one)"
            )
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        decoded = _b64_32(text)
        if decoded is None:
            raise ValueError(
                "expected base64 of a raw 32-byte X25519 public key (44 characters, as printed "
                "by `ivr keys generate`) or a PEM public key"
            )
        raw = decoded
    _check_usable(raw)
    return raw


def _check_usable(public_key: bytes) -> None:
    """Refuse low-order points: sealing to one would give a key anyone can compute."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise ValueError("is not a usable X25519 public key (a low-order point)") from None


def load_private_key(path: Path) -> X25519PrivateKey:
    """A private key file: PEM PKCS#8 (what ``ivr keys generate`` writes) or base64 of the raw
    32 bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadKeyFile(f"private key file {path} does not exist") from None
    except OSError as exc:
        raise BadKeyFile(f"private key file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadKeyFile(
            f"{path} is not a private key file (expected PEM or base64 text)"
        ) from None
    if "BEGIN ENCRYPTED PRIVATE KEY" in text:
        raise BadKeyFile(
            f"{path} is a passphrase-protected key; give an unencrypted copy "
            "(openssl pkey -in FILE -out PLAIN.pem), kept off the service host"
        )
    if "PUBLIC KEY" in text:
        raise BadKeyFile(f"{path} holds a public key; --private-key needs the private key")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise BadKeyFile(f"{path} is not a readable PEM private key ({exc})") from None
        if not isinstance(key, X25519PrivateKey):
            raise BadKeyFile(
                f"{path} holds a {type(key).__name__.removeprefix('_')} key, not an X25519 key"
            )
        return key
    raw = _b64_32(text)
    if raw is None:
        raise BadKeyFile(
            f"{path} is not a private key file: expected PEM (PKCS#8) or base64 of 32 bytes"
        )
    return X25519PrivateKey.from_private_bytes(raw)


def as_private_key(key: X25519PrivateKey | bytes) -> X25519PrivateKey:
    if isinstance(key, X25519PrivateKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == PUBLIC_KEY_LEN:
        return X25519PrivateKey.from_private_bytes(bytes(key))
    raise TypeError("a private key must be an X25519PrivateKey or its raw 32 bytes")


def write_keypair(directory: Path) -> tuple[Path, Path, bytes]:
    """Generate a key pair into ``directory``: private.pem (0600) and public.pem. Refuses to
    overwrite either. Returns (private path, public path, raw public key)."""
    private_dir(directory)
    private, public = generate_keypair()
    priv_path, pub_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (priv_path, pub_path):
        if path.exists():
            raise CustodyError(f"{path} already exists; not overwriting a key")
    fd = open_private(priv_path)
    try:
        os.write(fd, private_pem(private))
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, public_pem(public))
    finally:
        os.close(fd)
    return priv_path, pub_path, public


# -- sealing --------------------------------------------------------------------------------------
def _kdf(shared: bytes, eph_pub: bytes, tenant_pub: bytes, info: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + tenant_pub, info=info)
    return hkdf.derive(shared)


def seal_to(public_key: bytes, ad: bytes, plaintext: bytes, *, info: bytes) -> bytes:
    """``eph_pub ‖ nonce ‖ AES-256-GCM(k, nonce, plaintext, ad)``, openable only with the private
    key of ``public_key``."""
    eph = X25519PrivateKey.generate()
    eph_pub = raw_public(eph)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(public_key))
    key = _kdf(shared, eph_pub, public_key, info)
    nonce = secrets.token_bytes(_NONCE)
    return eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(
    private_key: X25519PrivateKey | bytes,
    key_ref: str,
    ad: bytes,
    sealed: bytes,
    *,
    info: bytes,
    what: str,
) -> bytes:
    """Open what ``seal_to`` sealed; ``what`` names it in errors ("recording rec_…")."""
    private = as_private_key(private_key)
    tenant_pub = raw_public(private)
    given = key_ref_of(tenant_pub)
    if given != key_ref:
        raise WrongPrivateKey(f"private key {given} does not match key {key_ref} of {what}")
    if len(sealed) < SEALED_OVERHEAD:
        raise KeyringCorrupt(f"the sealed key of {what} is truncated")
    eph_pub, nonce, body = (
        sealed[:PUBLIC_KEY_LEN],
        sealed[PUBLIC_KEY_LEN : PUBLIC_KEY_LEN + _NONCE],
        sealed[PUBLIC_KEY_LEN + _NONCE :],
    )
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        return AESGCM(_kdf(shared, eph_pub, tenant_pub, info)).decrypt(nonce, body, ad)
    except (InvalidTag, ValueError):
        raise KeyringCorrupt(
            f"the sealed key of {what} does not open with {key_ref} (altered?)"
        ) from None


def wrap_dek_to(public_key: bytes, tenant: str, recording_id: str, dek: bytes) -> tuple[str, bytes]:
    """(key_ref, wrapped_dek) of a data key sealed to a tenant's public key."""
    key_ref = key_ref_of(public_key)
    return key_ref, seal_to(public_key, dek_aad(tenant, recording_id, key_ref), dek, info=DEK_INFO)


def unwrap_dek_with(
    private_key: X25519PrivateKey | bytes,
    tenant: str,
    recording_id: str,
    key_ref: str,
    wrapped: bytes,
) -> bytes:
    return open_sealed(
        private_key,
        key_ref,
        dek_aad(tenant, recording_id, key_ref),
        wrapped,
        info=DEK_INFO,
        what=f"recording {recording_id}",
    )


def sealed_recording(recording_id: str, key_ref: str) -> PrivateKeyNeeded:
    return PrivateKeyNeeded(
        f"recording {recording_id} is sealed to the tenant's public key {key_ref}; "
        "give --private-key"
    )


# -- the data directory's record of each tenant's custody ----------------------------------------
def apply_custody(vault: Vault, public_keys: Mapping[str, bytes | None]) -> list[CustodyChange]:
    """Record in the data directory what the configuration says, and audit each change."""
    changes = vault.keyring.set_public_keys(public_keys)
    for change in changes:
        log.log(
            logging.WARNING if change.new == "local" else logging.INFO,
            "tenant %s: key custody changed from %s to %s",
            change.tenant,
            change.old,
            change.new,
        )
        vault.audit(
            actor="system",
            action="key.custody_changed",
            tenant=change.tenant,
            target=change.new,
            detail={"from": change.old, "to": change.new},
        )
    return changes


# -- re-wrapping ----------------------------------------------------------------------------------
@dataclass
class RewrapReport:
    tenant: str
    target: str  # the key_ref everything was re-wrapped under
    recordings: int = 0  # data keys re-wrapped
    callers: int = 0  # caller numbers re-sealed
    already_current: int = 0  # recordings already under the target
    without_key: int = 0  # erased, discarded or failed: no key left to re-wrap
    not_opened: dict[str, int] = field(default_factory=dict)  # key_ref → count left as they are
    moved_from: dict[str, int] = field(default_factory=dict)  # key_ref → count re-wrapped

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "target": self.target,
            "recordings": self.recordings,
            "callers": self.callers,
            "already_current": self.already_current,
            "without_key": self.without_key,
            "not_opened": dict(sorted(self.not_opened.items())),
            "moved_from": dict(sorted(self.moved_from.items())),
        }


def _count(report: RewrapReport, vault: Vault) -> None:
    with vault.catalog.transaction() as db:
        report.without_key = db.execute(
            "SELECT COUNT(*) FROM recordings WHERE tenant = ? AND wrapped_dek IS NULL",
            (report.tenant,),
        ).fetchone()[0]
        report.already_current = db.execute(
            "SELECT COUNT(*) FROM recordings WHERE tenant = ? AND wrapped_dek IS NOT NULL"
            " AND key_ref = ?",
            (report.tenant, report.target),
        ).fetchone()[0]


def _rewrap(
    vault: Vault,
    tenant: str,
    target: str,
    *,
    opener: Any,
    wrap: Any,
    seal_caller: Any,
    open_caller: Any,
    actor: str,
    batch: int,
) -> RewrapReport:
    """Walk the tenant's recordings and calls in id order, ``batch`` at a time: one transaction
    per batch (it holds the catalog's write lock, so an erasure cannot interleave and a key it
    destroyed is never written back) with its own ``key.rewrap_batch`` audit entry, then one
    ``key.rewrapped`` entry with the totals. ``opener(key_ref)`` gives the key that opens a
    ref, or None to leave it as it is."""
    report = RewrapReport(tenant, target)
    _count(report, vault)
    for table in ("recordings", "calls"):
        ref_col, sealed_col = (
            ("key_ref", "wrapped_dek")
            if table == "recordings"
            else ("caller_key_ref", "caller_sealed")
        )
        after = ""
        while True:
            moved: dict[str, int] = {}
            with vault.catalog.transaction() as db:
                rows = db.execute(
                    f"SELECT id, {ref_col} AS ref, {sealed_col} AS sealed FROM {table}"
                    f" WHERE tenant = ? AND id > ? AND {sealed_col} IS NOT NULL"
                    f" AND {ref_col} IS NOT NULL AND {ref_col} != ? ORDER BY id LIMIT ?",
                    (tenant, after, target, batch),
                ).fetchall()
                if not rows:
                    break
                after = rows[-1]["id"]
                for row in rows:
                    ref = row["ref"]
                    if opener(ref) is None:
                        if table == "recordings":
                            report.not_opened[ref] = report.not_opened.get(ref, 0) + 1
                        continue
                    if table == "recordings":
                        dek = unwrap_any(vault, tenant, row["id"], ref, row["sealed"], opener)
                        new = wrap(row["id"], dek)
                    else:
                        value = open_caller(row["id"], ref, row["sealed"])
                        new = seal_caller(row["id"], value)
                    db.execute(
                        f"UPDATE {table} SET {ref_col} = ?, {sealed_col} = ? WHERE id = ?",
                        (target, new, row["id"]),
                    )
                    moved[ref] = moved.get(ref, 0) + 1
                if moved:
                    count = sum(moved.values())
                    if table == "recordings":
                        report.recordings += count
                        for ref, n in moved.items():
                            report.moved_from[ref] = report.moved_from.get(ref, 0) + n
                    else:
                        report.callers += count
                    vault.catalog.audit(
                        db,
                        actor=actor,
                        action="key.rewrap_batch",
                        tenant=tenant,
                        target=target,
                        detail={
                            "kind": "data_keys" if table == "recordings" else "caller_numbers",
                            "count": count,
                            "from": dict(sorted(moved.items())),
                        },
                    )
    vault.audit(
        actor=actor, action="key.rewrapped", tenant=tenant, target=target, detail=report.as_dict()
    )
    # Old wrapped values out of the write-ahead log too (secure_delete covers the database).
    vault.catalog.checkpoint()
    return report


def unwrap_any(
    vault: Vault, tenant: str, recording_id: str, key_ref: str, wrapped: bytes, opener: Any
) -> bytes:
    key = opener(key_ref)
    if is_x25519_ref(key_ref):
        return unwrap_dek_with(key, tenant, recording_id, key_ref, wrapped)
    return unwrap_dek(key, tenant, recording_id, key_ref, wrapped)


def rewrap_local(vault: Vault, tenant: str, *, actor: str, batch: int = 500) -> RewrapReport:
    """Re-wrap every local data key (and sealed caller number) of ``tenant`` under its newest
    KEK version, so older versions are no longer needed. Keys sealed to a public key, and
    recordings with no key left, are not touched."""
    if not vault.keyring.has_tenant(tenant):
        raise UnknownKey(f"tenant {tenant!r} has no keys yet")
    target, kek = vault.keyring.current(tenant)

    def opener(ref: str) -> bytes | None:
        if is_x25519_ref(ref):
            return None
        try:
            return vault.keyring.kek(tenant, ref)
        except UnknownKey:
            return None

    return _rewrap(
        vault,
        tenant,
        target,
        opener=opener,
        wrap=lambda rid, dek: wrap_dek(kek, tenant, rid, target, dek),
        open_caller=lambda cid, ref, sealed: open_value(
            vault.keyring.kek(tenant, ref), caller_aad(tenant, cid), sealed
        ),
        seal_caller=lambda cid, value: seal_value(kek, caller_aad(tenant, cid), value),
        actor=actor,
        batch=batch,
    )


def rewrap_to_public(
    vault: Vault,
    tenant: str,
    public_key: bytes,
    *,
    private_key: X25519PrivateKey | None,
    actor: str,
    batch: int = 500,
) -> RewrapReport:
    """Re-seal every data key (and caller number) of ``tenant`` to ``public_key``: local ones
    through the keyring, ones sealed to an older public key with its ``private_key``. Keys
    sealed to yet another public key are left as they are and counted in ``not_opened``."""
    target = key_ref_of(public_key)
    old_ref = key_ref_of(raw_public(private_key)) if private_key is not None else None

    def opener(ref: str) -> Any:
        if is_x25519_ref(ref):
            return private_key if ref == old_ref else None
        try:
            return vault.keyring.kek(tenant, ref)
        except UnknownKey:
            return None

    def open_caller(cid: str, ref: str, sealed: bytes) -> bytes:
        aad = caller_aad(tenant, cid)
        key = opener(ref)
        if is_x25519_ref(ref):
            return open_sealed(key, ref, aad, sealed, info=CALLER_INFO, what=f"call {cid}")
        return open_value(key, aad, sealed)

    return _rewrap(
        vault,
        tenant,
        target,
        opener=opener,
        wrap=lambda rid, dek: wrap_dek_to(public_key, tenant, rid, dek)[1],
        open_caller=open_caller,
        seal_caller=lambda cid, value: seal_to(
            public_key, caller_aad(tenant, cid), value, info=CALLER_INFO
        ),
        actor=actor,
        batch=batch,
    )
