"""Where the records of processing (ivr/gdpr/ropa.py) say the data is: the data directory, and
the shared stores the configuration may name instead ([storage] catalog_url: the catalog in
PostgreSQL; keyring_url: the keyring in a key store database; blob_url: new recordings' audio in
an object store). Every sentence here is true of
the configuration it is written from, whichever stores that names (tests/test_ropa.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ivr.config import Config
from storage.keys import KEYRING_FILE
from storage.vault import CATALOG_FILE

__all__ = ["Places", "redact_url"]


def redact_url(url: str) -> str:
    """``url`` without its user name, password and query (``sslmode=...``): where a database
    is, as a record meant for readers outside operations may say it."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class Places:
    """The stores a configuration names; None: the data directory's own."""

    catalog: str | None  # a redacted postgresql:// URL
    keyring: str | None  # a redacted postgresql:// URL
    blobs: str | None  # the s3:// URL

    @classmethod
    def of(cls, config: Config) -> Places:
        catalog = redact_url(config.catalog_url) if config.catalog_url else None
        keyring = redact_url(config.keyring_url) if config.keyring_url else None
        return cls(catalog=catalog, keyring=keyring, blobs=config.blob_url)

    @property
    def only_the_data_directory(self) -> bool:
        return self.catalog is None and self.keyring is None and self.blobs is None

    @property
    def keys(self) -> str:
        """Where the keys are, for "back up the data apart from ..."."""
        return KEYRING_FILE if self.keyring is None else "the key store database"

    def named(self) -> str:
        """The places, briefly: "the data directory", or with the stores named."""
        places = ["the data directory"]
        if self.catalog is not None:
            places.append(f"the catalog database {self.catalog}")
        if self.keyring is not None:
            places.append(f"the key store database {self.keyring}")
        if self.blobs is not None:
            places.append(f"the object store {self.blobs}")
        if len(places) == 1:
            return places[0]
        return ", ".join(places[:-1]) + " and " + places[-1]

    def data_directory_holds(self, blob_text: str) -> str:
        """What the data directory holds (``blob_text``: the blobs/ part)."""
        parts = []
        if self.keyring is None:
            parts.append(f"{KEYRING_FILE} (controller keys, sealed under the master key)")
        if self.catalog is None:
            parts.append(
                f"{CATALOG_FILE} (calls, recordings with their wrapped keys, the audit log; SQLite)"
            )
        if not parts:  # "and the recordings made before ..." joins nothing
            blob_text = blob_text.removeprefix("and ")
        return "".join(part + ", " for part in parts) + blob_text

    def database_sentences(self) -> list[str]:
        """Where the catalog and the keyring are, when not in the data directory."""
        out = []
        if self.catalog is not None:
            out.append(
                f"The catalog (calls, caller numbers sealed and as keyed hashes, recordings with "
                f"their wrapped data keys, erasure tombstones, the audit log, breaches) is the "
                f"PostgreSQL database {self.catalog} ([storage] catalog_url), shared by every node "
                "of the service. Its server's disks, write-ahead log, WAL archives, replicas and "
                "base backups hold what it holds; the operator of that server, if not the "
                "processor itself, is a sub-processor (docs/postgresql.md)."
            )
        if self.keyring is not None:
            out.append(
                f"The keyring (the controllers' key versions, sealed under the master key) is "
                f"in the key store database {self.keyring} ([storage] keyring_url), shared by "
                "every node: the database never sees a key in clear. It is to be backed up "
                "apart from the catalog and only in its newest copy, so that a retired key "
                "version is gone from every copy (docs/key-custody.md)."
            )
        return out

    def catalog_availability(self) -> str:
        keyring = (
            "the keyring is replaced atomically"
            if self.keyring is None
            else "a change of the keyring is one transaction under the key store's own lock"
        )
        if self.catalog is None:
            if self.keyring is None:
                return (
                    "The catalog is SQLite in WAL mode; keys and keyring are replaced atomically."
                )
            return f"The catalog is SQLite in WAL mode; {keyring}."
        return (
            "The catalog is a PostgreSQL database: every change is one transaction, and a "
            f"call's catalog writes that a lost connection refused are kept and retried; "
            f"{keyring}."
        )

    def purge_leftovers(self) -> list[str]:
        """What an erasure and a retirement leave in PostgreSQL's own files
        (docs/postgresql.md, docs/key-custody.md)."""
        out = []
        if self.catalog is not None:
            out.append(
                "On PostgreSQL an erased data key no longer answers any query once the erasure's "
                "VACUUM has run, but its bytes may stay in the table's free space until "
                "overwritten, in the write-ahead log until it is recycled, and in WAL archives and "
                "base backups as long as they are kept: like a backup of the catalog, they open "
                "the recording only until the key version that wrapped it is retired "
                "(docs/postgresql.md)."
            )
        if self.keyring is not None:
            out.append(
                "A retired key version is rewritten out of the key store and its table "
                "VACUUMed; the key store database's write-ahead log, WAL archives and base "
                "backups keep it until they age out, so they count among the keys' backups "
                "(docs/key-custody.md)."
            )
        return out
