"""What a vault's blob stores hold, whichever they are (local files or an object store), so the
same test bodies check both: the SQLite suite here, and PostgreSQL + S3 in
tests/cluster/test_pgs3_*.py (the fixture ``vaults_on_postgres_and_s3``)."""

from __future__ import annotations

from typing import Any

from storage.catalog import RecordingRow
from storage.vault import Vault


def blob_bytes(vault: Vault, row: RecordingRow) -> bytes:
    """A finished recording's blob, as its store holds it (an object store's segments joined)."""
    assert row.blob_path is not None, f"recording {row.id} has no blob"
    store = vault.blob_store(row.blob_path)
    opened = store.open(row.blob_path, size=row.blob_size, segments=vault.segments(row.id))
    with opened as source:
        return source.read()


def blobs_of(vault: Vault, tenant: str, recording_id: str) -> list[str]:
    """Every blob file (finished or ``.part``) and object any of the vault's stores holds of
    one recording: [] once it is discarded or erased."""
    found = [p.name for p in vault.local_blobs.root.rglob(f"{recording_id}*")]
    for store in vault.blob_stores():
        if store is vault.local_blobs:
            continue
        s3: Any = store  # an S3BlobStore: its keys are a keyed hash of tenant and id
        found += [key for _, key, _, _ in s3.listed(s3.relpath(tenant, recording_id))]
    return found


def objects(vault: Vault) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every object in the buckets of the vault's object stores: its key, bytes and user
    metadata ({} where it has none)."""
    found: dict[str, tuple[bytes, dict[str, str]]] = {}
    for store in vault.blob_stores():
        if store is vault.local_blobs:
            continue
        s3: Any = store
        for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
            for listed in page.get("Contents", []):
                got = s3.client.get_object(Bucket=s3.bucket, Key=listed["Key"])
                found[f"s3://{s3.bucket}/{listed['Key']}"] = (got["Body"].read(), got["Metadata"])
    return found
