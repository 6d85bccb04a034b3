"""Key custody: the master key, the tenants' versioned key-encryption keys, data-key wrapping.

Hierarchy: master key (``IVR_MASTER_KEY`` or a generated file) → per-tenant KEKs, versioned, kept
sealed in ``keyring.json`` → one data key (DEK) per recording, wrapped by the tenant's newest KEK
and stored only in the catalog. Rotation adds a KEK version; older versions stay to unwrap older
recordings. Each tenant also has a lookup key (never rotated: lookups must keep matching) for the
keyed hash of caller numbers.

A tenant may instead be under public-key custody (storage/custody.py): its data keys are sealed
to a public key whose private half the controller keeps. The keyring remembers each such tenant's
public key (sealed under the master key, so it cannot be swapped unnoticed), so that a process
started without the configuration still seals to it rather than falling back to local keys.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.files import atomic_write, private_dir, utc_iso
from storage.keystore import FileKeyringStore, KeyringStore

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "IVR_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
KEYRING_FILE = "keyring.json"
KEY_LEN = 32
_NONCE = 12
_CHECK = b"ivr keyring master check v1"


class KeyCustodyError(Exception):
    """Base for key custody failures; the message is meant for an operator."""


class MasterKeyError(KeyCustodyError):
    pass


class KeyringCorrupt(KeyCustodyError):
    pass


class UnknownKey(KeyCustodyError):
    pass


def parse_master_key(text: str) -> bytes:
    """32 bytes given as 64 hex digits or base64 (standard or URL-safe, padding optional)."""
    text = text.strip()
    if len(text) == 2 * KEY_LEN:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
        if len(raw) != KEY_LEN:
            # Standard alphabet as well: altchars only maps '-' and '_'.
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_LEN:
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} must be {KEY_LEN} random bytes as 64 hex digits or base64 "
            f"(e.g. from `openssl rand -base64 32`)"
        )
    return raw


def load_master_key(
    data_dir: Path, *, environ: dict[str, str] | None = None, keyring_exists: bool | None = None
) -> bytes:
    """The master key from the environment, else from ``data_dir/master.key``, else a new one.

    A new key is generated only when there is no keyring yet: generating one next to an
    existing keyring would only hide the real problem (the key that opens it is missing).
    ``keyring_exists``: whether a shared key store already holds one (None: look for
    ``keyring.json`` in ``data_dir``).
    """
    env = os.environ if environ is None else environ
    if env.get(MASTER_KEY_ENV):
        return parse_master_key(env[MASTER_KEY_ENV])
    path = data_dir / MASTER_KEY_FILE
    if path.exists():
        try:
            return parse_master_key(path.read_text(encoding="ascii"))
        except (MasterKeyError, UnicodeDecodeError):
            raise MasterKeyError(f"{path} does not hold a valid master key") from None
    if keyring_exists if keyring_exists is not None else (data_dir / KEYRING_FILE).exists():
        where = "the key store" if keyring_exists is not None else str(data_dir / KEYRING_FILE)
        raise MasterKeyError(
            f"{where} holds a keyring but no master key was given: "
            f"set {MASTER_KEY_ENV} to the key that created it"
        )
    key = secrets.token_bytes(KEY_LEN)
    private_dir(data_dir)
    atomic_write(path, base64.b64encode(key) + b"\n", mode=0o600)
    log.warning(
        "generated a master key at %s (mode 0600). For production set %s from a secret store "
        "and keep a backup: without it no recording can be decrypted.",
        path,
        MASTER_KEY_ENV,
    )
    return key


def _seal(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    if len(sealed) < _NONCE + 16:
        raise InvalidTag
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


def _kek_aad(tenant: str, version: int) -> bytes:
    return f"ivr kek v1\x00{tenant}\x00{version}".encode()


_AUDIT_AAD = b"ivr audit key v1"


def _lookup_aad(tenant: str) -> bytes:
    return f"ivr lookup key v1\x00{tenant}".encode()


def _custody_aad(tenant: str) -> bytes:
    return f"ivr custody public key v1\x00{tenant}".encode()


def dek_aad(tenant: str, recording_id: str, key_ref: str) -> bytes:
    return f"ivr dek v1\x00{tenant}\x00{recording_id}\x00{key_ref}".encode()


def caller_aad(tenant: str, call_id: str) -> bytes:
    """Associated data of a sealed caller number, whichever key seals it."""
    return f"ivr caller v1\x00{tenant}\x00{call_id}".encode()


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key, so operators can tell versions apart."""
    return hashlib.sha256(b"ivr key fingerprint\x00" + key).hexdigest()[:16]


_T = TypeVar("_T")


def _synchronized(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a Keyring method under its lock: the service uses one keyring from many threads."""

    @functools.wraps(method)
    def locked(self: Keyring, *args: Any, **kwargs: Any) -> _T:
        with self._mutex:
            return method(self, *args, **kwargs)

    return locked


@dataclass(frozen=True, slots=True)
class KekInfo:
    tenant: str
    version: int
    created_at: str
    fingerprint: str
    current: bool

    @property
    def key_ref(self) -> str:
        return f"local/{self.version}"


@dataclass(frozen=True, slots=True)
class CustodyChange:
    """A tenant moved between custody modes or public keys: "local" or an x25519 key_ref."""

    tenant: str
    old: str
    new: str


def _public_ref(public_key: bytes) -> str:
    return "x25519/" + fingerprint(public_key)


def parse_key_ref(key_ref: str) -> int:
    kind, _, version = key_ref.partition("/")
    if kind != "local" or not version.isdigit():
        raise UnknownKey(f"unsupported key reference {key_ref!r}")
    return int(version)


class Keyring:
    """The tenants' KEKs, sealed under the master key in one JSON document: ``keyring.json``
    in the data directory, or a key store shared by several nodes (storage/keystore.py).

    Several processes may share the document (the service and a CLI rotating a key, or the
    nodes of a cluster), so every change happens under the store's exclusive lock on a re-read
    document, and reads notice a newer document by the store's stamp.
    """

    def __init__(
        self, store: KeyringStore | Path, master_key: bytes, clock: Callable[[], datetime]
    ) -> None:
        self.store: KeyringStore = FileKeyringStore(store) if isinstance(store, Path) else store
        self._master = master_key
        self._clock = clock
        self._stamp: object | None = None
        # The service reads keys from several threads; a reload must never be seen half-done.
        self._mutex = threading.RLock()
        self._doc: dict[str, Any] = {}
        self._keks: dict[tuple[str, int], bytes] = {}
        self._lookup: dict[str, bytes] = {}
        self._public: dict[str, bytes] = {}
        self._audit: tuple[bytes, int] | None = None
        with self._locked():
            if self.store.stamp() is None:
                self._doc = {
                    "format": "ivr-keyring",
                    "version": 1,
                    "master_check": base64.b64encode(_seal(master_key, _CHECK, _CHECK)).decode(),
                    "tenants": {},
                }
                self._save()
            self._load()

    # -- reading -------------------------------------------------------------------------------
    def _refresh(self) -> None:
        stamp = self.store.stamp()
        if stamp is None:
            raise KeyringCorrupt(f"keyring {self.store.where} has disappeared")
        if stamp != self._stamp:
            self._load()

    def _load(self) -> None:
        where = self.store.where
        try:
            data, stamp = self.store.read()
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != "ivr-keyring" or doc.get("version") != 1:
                raise ValueError("not an ivr keyring of version 1")
            check = base64.b64decode(doc["master_check"], validate=True)
            tenants = doc["tenants"]
            if not isinstance(tenants, dict):
                raise ValueError("tenants is not an object")
            custody = doc.get("custody", {})
            if not isinstance(custody, dict):
                raise ValueError("custody is not an object")
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyringCorrupt(f"keyring {where} is unreadable or corrupt: {exc}") from None
        try:
            _open(self._master, _CHECK, check)
        except InvalidTag:
            raise MasterKeyError(
                f"the master key does not open keyring {where} (wrong {MASTER_KEY_ENV}?)"
            ) from None
        keks: dict[tuple[str, int], bytes] = {}
        lookup: dict[str, bytes] = {}
        for tenant, entry in tenants.items():
            try:
                lookup[tenant] = _open(
                    self._master, _lookup_aad(tenant), base64.b64decode(entry["lookup_key"])
                )
                for kek in entry["keks"]:
                    version = int(kek["version"])
                    keks[(tenant, version)] = _open(
                        self._master, _kek_aad(tenant, version), base64.b64decode(kek["wrapped"])
                    )
            except (InvalidTag, KeyError, TypeError, ValueError, binascii.Error):
                raise KeyringCorrupt(
                    f"keyring {where}: the entry of tenant {tenant!r} is damaged or was altered"
                ) from None
        public: dict[str, bytes] = {}
        for tenant, entry in custody.items():
            try:
                key = _open(self._master, _custody_aad(tenant), base64.b64decode(entry["sealed"]))
                if len(key) != KEY_LEN:
                    raise ValueError
            except (InvalidTag, KeyError, TypeError, ValueError, binascii.Error):
                raise KeyringCorrupt(
                    f"keyring {where}: the public key of tenant {tenant!r} is damaged or was "
                    "altered"
                ) from None
            public[tenant] = key
        audit = None
        if "audit_key" in doc:
            try:
                sealed_audit = _open(self._master, _AUDIT_AAD, base64.b64decode(doc["audit_key"]))
                if len(sealed_audit) != KEY_LEN + 8:
                    raise ValueError
                audit = (sealed_audit[:KEY_LEN], int.from_bytes(sealed_audit[KEY_LEN:], "big"))
            except (InvalidTag, TypeError, ValueError, binascii.Error):
                raise KeyringCorrupt(
                    f"keyring {where}: the audit key is damaged or was altered"
                ) from None
        self._doc, self._keks, self._lookup, self._public = doc, keks, lookup, public
        self._audit = audit
        self._stamp = stamp

    @_synchronized
    def audit_key(self, legacy_entries: Callable[[], int]) -> tuple[bytes, int]:
        """The key of the audit chain's HMACs and how many entries came before it, made on
        first use. Both are sealed under the master key, so nobody without it can write links
        that verify, nor pretend that keyed entries are older, unkeyed ones."""
        self._refresh()
        if self._audit is None:
            with self._locked():
                self._load()
                if self._audit is None:
                    value = secrets.token_bytes(KEY_LEN) + legacy_entries().to_bytes(8, "big")
                    sealed = _seal(self._master, _AUDIT_AAD, value)
                    self._doc["audit_key"] = base64.b64encode(sealed).decode()
                    self._save()
                    self._load()
        assert self._audit is not None
        return self._audit

    def service_key(self, purpose: str) -> bytes:
        """A key for one of the service's own purposes (``purpose`` names it, e.g. the Twilio
        stream tokens), derived from the master key with HKDF-SHA256: the same in every process
        and on every node that holds the master key, different for every purpose, and never
        stored. The master key itself is used for nothing but this and sealing the keyring."""
        if not purpose:
            raise ValueError("a service key needs a purpose")
        info = b"ivr service key v1: " + purpose.encode()
        return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(
            self._master
        )

    @_synchronized
    def list(self, tenant: str | None = None) -> list[KekInfo]:
        self._refresh()
        out = []
        for name, entry in sorted(self._doc["tenants"].items()):
            if tenant is not None and name != tenant:
                continue
            newest = max(int(k["version"]) for k in entry["keks"])
            for kek in entry["keks"]:
                version = int(kek["version"])
                out.append(
                    KekInfo(
                        name,
                        version,
                        kek["created_at"],
                        fingerprint(self._keks[(name, version)]),
                        version == newest,
                    )
                )
        return out

    @_synchronized
    def has_tenant(self, tenant: str) -> bool:
        self._refresh()
        return tenant in self._doc["tenants"]

    @_synchronized
    def current(self, tenant: str) -> tuple[str, bytes]:
        """(key_ref, KEK) of the tenant's newest version, creating version 1 on first use."""
        self._refresh()
        if tenant not in self._doc["tenants"]:
            with self._locked():
                self._load()
                if tenant not in self._doc["tenants"]:
                    self._add_version(tenant)
                    self._save()
                    self._load()
        version = max(v for (t, v) in self._keks if t == tenant)
        return f"local/{version}", self._keks[(tenant, version)]

    @_synchronized
    def kek(self, tenant: str, key_ref: str) -> bytes:
        version = parse_key_ref(key_ref)
        self._refresh()
        if (tenant, version) not in self._keks:
            # Another node may have added it since this one last looked (a shared key store is
            # read at most every REFRESH_SECONDS): look again before calling it unknown.
            self.store.refresh_now()
            self._refresh()
        try:
            return self._keks[(tenant, version)]
        except KeyError:
            raise UnknownKey(f"tenant {tenant!r} has no key version {version}") from None

    @_synchronized
    def lookup_key(self, tenant: str) -> bytes:
        self.current(tenant)
        return self._lookup[tenant]

    @_synchronized
    def public_key(self, tenant: str) -> bytes | None:
        """The public key the tenant's data keys are sealed to, or None for local custody."""
        self._refresh()
        return self._public.get(tenant)

    @_synchronized
    def public_keys(self) -> dict[str, bytes]:
        self._refresh()
        return dict(self._public)

    # -- changing ------------------------------------------------------------------------------
    @_synchronized
    def set_public_keys(
        self, custody: Mapping[str, bytes | None]
    ) -> builtins.list[CustodyChange]:  # plain `list` would be Keyring.list
        """Record each named tenant's custody: a public key, or None for local keys. Tenants
        not named keep what is recorded. Returns what changed."""
        with self._locked():
            self._load()
            changes = []
            entries = self._doc.setdefault("custody", {})
            for tenant, key in sorted(custody.items()):
                old = self._public.get(tenant)
                if key == old:
                    continue
                if key is None:
                    del entries[tenant]
                else:
                    sealed = _seal(self._master, _custody_aad(tenant), key)
                    entries[tenant] = {
                        "key_ref": _public_ref(key),
                        "since": utc_iso(self._clock()),
                        "sealed": base64.b64encode(sealed).decode(),
                    }
                changes.append(
                    CustodyChange(
                        tenant,
                        "local" if old is None else _public_ref(old),
                        "local" if key is None else _public_ref(key),
                    )
                )
            if changes:
                self._save()
                self._load()
        return changes

    @_synchronized
    def rotate(self, tenant: str) -> KekInfo:
        with self._locked():
            self._load()
            if tenant not in self._doc["tenants"]:
                raise UnknownKey(
                    f"tenant {tenant!r} has no keys yet (its first key is made with its first "
                    "recording)"
                )
            version = self._add_version(tenant)
            self._save()
            self._load()
        return next(k for k in self.list(tenant) if k.version == version)

    @_synchronized
    def retire(self, tenant: str, before: int) -> builtins.list[KekInfo]:
        """Destroy the tenant's KEK versions older than ``before``; what was destroyed.

        The keyring file is rewritten without them and replaced atomically, and this process
        forgets them (other processes reload the changed file before their next use). The
        newest version never goes: new recordings need it. Whether anything still needs the
        old versions is the caller's question (storage.retirement asks the catalog)."""
        with self._locked():
            self._load()
            entry = self._doc["tenants"].get(tenant)
            if entry is None:
                raise UnknownKey(f"tenant {tenant!r} has no keys")
            newest = max(int(k["version"]) for k in entry["keks"])
            if not 1 <= before <= newest:
                raise KeyCustodyError(
                    f"tenant {tenant!r}: cannot retire versions before {before}: the newest "
                    f"version, {newest}, must stay (give a version from 1 to {newest}; "
                    f"`ivr keys rotate --tenant {tenant}` makes a newer one)"
                )
            doomed = [k for k in self.list(tenant) if k.version < before]
            if doomed:
                entry["keks"] = [k for k in entry["keks"] if int(k["version"]) >= before]
                self._save()
                self._load()
        if doomed:
            self.store.after_retirement()
        return doomed

    def _add_version(self, tenant: str) -> int:
        entry = self._doc["tenants"].setdefault(tenant, {"keks": []})
        if "lookup_key" not in entry:
            sealed = _seal(self._master, _lookup_aad(tenant), secrets.token_bytes(KEY_LEN))
            entry["lookup_key"] = base64.b64encode(sealed).decode()
        version = 1 + max((int(k["version"]) for k in entry["keks"]), default=0)
        sealed = _seal(self._master, _kek_aad(tenant, version), secrets.token_bytes(KEY_LEN))
        entry["keks"].append(
            {
                "version": version,
                "created_at": utc_iso(self._clock()),
                "wrapped": base64.b64encode(sealed).decode(),
            }
        )
        return version

    def _save(self) -> None:
        data = json.dumps(self._doc, indent=2, sort_keys=True).encode() + b"\n"
        self.store.write(data)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self.store.locked()

    def close(self) -> None:
        self.store.close()


# -- data keys and small secrets ---------------------------------------------------------------
def new_dek() -> bytes:
    return secrets.token_bytes(KEY_LEN)


def wrap_dek(kek: bytes, tenant: str, recording_id: str, key_ref: str, dek: bytes) -> bytes:
    return _seal(kek, dek_aad(tenant, recording_id, key_ref), dek)


def unwrap_dek(kek: bytes, tenant: str, recording_id: str, key_ref: str, wrapped: bytes) -> bytes:
    try:
        return _open(kek, dek_aad(tenant, recording_id, key_ref), wrapped)
    except InvalidTag:
        raise KeyringCorrupt(
            f"the wrapped data key of recording {recording_id} does not open with {key_ref}"
        ) from None


def seal_value(kek: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """Encrypt a small personal value (a caller number) for the catalog."""
    return _seal(kek, aad, plaintext)


def open_value(kek: bytes, aad: bytes, sealed: bytes) -> bytes:
    try:
        return _open(kek, aad, sealed)
    except InvalidTag:
        raise KeyringCorrupt("an encrypted catalog value does not open (altered?)") from None


def keyed_hash(lookup_key: bytes, value: str) -> str:
    return hmac.new(lookup_key, value.encode(), hashlib.sha256).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)
