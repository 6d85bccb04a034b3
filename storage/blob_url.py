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
