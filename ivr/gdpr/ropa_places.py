"""Where the records of processing (ivr/gdpr/ropa.py) say the data is: the data directory, and
the shared stores the configuration may name instead ([storage] catalog_url: the catalog in
PostgreSQL; blob_url: new recordings' audio in an object store). Every sentence here is true of
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
    blobs: str | None  # the s3:// URL

    @classmethod
    def of(cls, config: Config) -> Places:
        catalog = redact_url(config.catalog_url) if config.catalog_url else None
        return cls(catalog=catalog, blobs=config.blob_url)

    @property
    def only_the_data_directory(self) -> bool:
        return self.catalog is None and self.blobs is None

    def named(self) -> str:
        """The places, briefly: "the data directory", or with the stores named."""
        places = ["the data directory"]
        if self.catalog is not None:
            places.append(f"the catalog database {self.catalog}")
        if self.blobs is not None:
            places.append(f"the object store {self.blobs}")
        if len(places) == 1:
            return places[0]
        return ", ".join(places[:-1]) + " and " + places[-1]

    def data_directory_holds(self, blob_text: str) -> str:
        """What the data directory holds (``blob_text``: the blobs/ part)."""
        parts = [f"{KEYRING_FILE} (controller keys, sealed under the master key)"]
        if self.catalog is None:
            parts.append(
                f"{CATALOG_FILE} (calls, recordings with their wrapped keys, the audit log; "
                "SQLite)"
            )
        return ", ".join(parts) + ", " + blob_text

    def catalog_sentences(self) -> list[str]:
        """Where the catalog is, when it is not in the data directory."""
        if self.catalog is None:
            return []
        return [
            f"The catalog (calls, caller numbers sealed and as keyed hashes, recordings with "
            f"their wrapped data keys, erasure tombstones, the audit log, breaches) is the "
            f"PostgreSQL database {self.catalog} ([storage] catalog_url), shared by every node "
            "of the service. Its server's disks, write-ahead log, WAL archives, replicas and "
            "base backups hold what it holds; the operator of that server, if not the "
            "processor itself, is a sub-processor (docs/postgresql.md)."
        ]

    def catalog_availability(self) -> str:
        if self.catalog is None:
            return "The catalog is SQLite in WAL mode; keys and keyring are replaced atomically."
        return (
            "The catalog is a PostgreSQL database: every change is one transaction, and a "
            "call's catalog writes that a lost connection refused are kept and retried; the "
            "keyring is replaced atomically."
        )

    def purge_leftovers(self) -> str | None:
        """What an erasure leaves in PostgreSQL's own files (docs/postgresql.md)."""
        if self.catalog is None:
            return None
        return (
            "On PostgreSQL an erased data key no longer answers any query once the erasure's "
            "VACUUM has run, but its bytes may stay in the table's free space until "
            "overwritten, in the write-ahead log until it is recycled, and in WAL archives and "
            "base backups as long as they are kept: like a backup of the catalog, they open "
            "the recording only until the key version that wrapped it is retired "
            "(docs/postgresql.md)."
        )
