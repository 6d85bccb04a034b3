"""``blob_url``: where recordings' blobs go, as the configuration names it (docs/s3.md).

Parsed here, without the S3 client, so that a configuration can be checked where botocore is
not installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Chunks per segment object (storage/s3blobs.py): five one-second chunks, about five seconds.
DEFAULT_SEGMENT_CHUNKS = 5
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_BLOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # without a trailing slash; may be empty

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket`` or ``s3://bucket/prefix``; ValueError says what is wrong."""
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r}: expected s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"{url!r}: {bucket!r} is not a valid bucket name")
        if prefix and not _PREFIX.match(prefix):
            raise ValueError(f"{url!r}: the prefix may hold letters, digits, '_', '.', '-' and '/'")
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        """``s3://bucket`` or ``s3://bucket/prefix``, as ``parse`` reads it."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @classmethod
    def of_blob(cls, blob_path: str) -> S3Location:
        """The store a catalog ``blob_path`` of the form ``s3://bucket[/prefix]/<id>`` is in."""
        head, _, blob_id = blob_path.rpartition("/")
        if not is_s3_blob(blob_path) or not _BLOB_ID.match(blob_id):
            raise ValueError(f"{blob_path!r} is not a blob of an object store")
        return cls.parse(head)


def is_s3_blob(blob_path: str) -> bool:
    """Whether a catalog ``blob_path`` names a blob in an object store (not a local file)."""
    return blob_path.startswith("s3://")
