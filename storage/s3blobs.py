"""S3-compatible blob store: a recording as a run of write-once segment objects.

Selected by ``blob_url = "s3://bucket/prefix"``; the endpoint, credentials and region come from
the environment under the standard names (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION). docs/s3.md describes the layout; in short:

- A blob is the recording format of docs/recording-format.md cut into segments at chunk
  boundaries: each segment object holds one or more whole sealed chunks (the first one also
  the header), and the segments concatenated in order are the blob, byte for byte. The format's
  STREAM nonces, not the segmentation, are what detect a missing or reordered chunk.
- A segment is sent when it holds ``segment_chunks`` chunks (about five seconds of audio) or
  ``segment_bytes``, and the rest when the recording ends. One recording has at most one
  upload in flight, so its segments reach the store in order, and at most one segment being
  filled: a process that dies loses at most that one, as a local file loses at most what was
  not yet synced.
- Every PUT carries ``If-None-Match: *``: a retried or duplicate writer cannot overwrite a
  segment. A retry whose first attempt did land gets 412; the object is then read back, and
  only the same bytes count as success.
- Keys are ``<prefix>/<id>/<8-digit segment number>`` where ``id`` is an HMAC of the tenant
  and recording id under a key derived from the master key: opaque to whoever lists the bucket,
  the same for every process holding the master key (so a dead writer's segments are found). No
  user metadata is sent.

botocore (sync) is the client: the vault's blob I/O already runs on a thread pool (fsyncs of
local blobs), so uploads run on one too and the event loop never waits for the network. It is
imported only when an object store is configured (the ``s3`` extra).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.blob_url import DEFAULT_SEGMENT_CHUNKS, S3Location
from storage.blobs import BlobInfo, ByteSource, Segment
from storage.errors import VaultWriteError
from storage.format import FormatError

log = logging.getLogger(__name__)

_SEQ_DIGITS = 8
DEFAULT_SEGMENT_BYTES = 512 * 1024
# A store that takes no segment for this long (its buffer this full) fails the recording as a
# full disk would: audio is not kept in memory without bound.
MAX_PENDING_FACTOR = 2
_READ_BLOCK = 256 * 1024


class ObjectStoreError(OSError):
    """The object store refused or failed a request (an OSError, as a disk's failures are)."""

    def __init__(self, what: str, exc: BaseException | str) -> None:
        super().__init__(errno.EIO, f"object store: {what}: {exc}")


def client_from_env(environ: Mapping[str, str]) -> Any:
    """A botocore S3 client configured from the standard AWS environment variables."""
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = botocore.session.get_session()
    config = Config(
        region_name=region,
        # A custom endpoint (SeaweedFS, MinIO, Ceph) is reached by path; AWS picks for itself.
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=30,
        max_pool_connections=16,
    )
    return session.create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=environ.get("AWS_SESSION_TOKEN") or None,
        config=config,
    )


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3BlobStore:
    def __init__(
        self,
        client: Any,
        location: S3Location,
        *,
        names_key: bytes,
        segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        io_threads: int = 8,
    ) -> None:
        if segment_chunks < 1 or segment_bytes < 1:
            raise ValueError("a segment holds at least one chunk and one byte")
        self.client = client
        self.location = location
        self.bucket = location.bucket
        self._names_key = names_key
        self.segment_chunks = segment_chunks
        self.segment_bytes = segment_bytes
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-s3")
        self._flags: tuple[bool, bool] | None = None  # (versioned, Object Lock), asked once

    @classmethod
    def from_url(
        cls, url: str, *, environ: Mapping[str, str], names_key: bytes, **kwargs: Any
    ) -> S3BlobStore:
        return cls(client_from_env(environ), S3Location.parse(url), names_key=names_key, **kwargs)

    @property
    def url(self) -> str:
        return self.location.url

    # -- names -----------------------------------------------------------------------------
    def relpath(self, tenant: str, recording_id: str) -> str:
        """``s3://bucket[/prefix]/<id>`` (the catalog's ``blob_path``: any process finds the
        store from it). The id is a keyed hash, so a key in the bucket names no one."""
        mac = hmac.new(self._names_key, f"{tenant}\0{recording_id}".encode(), hashlib.sha256)
        return f"{self.url}/{mac.hexdigest()[:32]}"

    def folder(self, relpath: str) -> str:
        """The key prefix of one blob's segments (with its trailing slash)."""
        head, _, blob_id = relpath.rpartition("/")
        if head != self.url or not re.fullmatch(r"[0-9a-f]{32}", blob_id):
            raise FileNotFoundError(f"{relpath!r} is not a blob of the object store {self.url}")
        base = f"{self.location.prefix}/" if self.location.prefix else ""
        return f"{base}{blob_id}/"

    def key(self, relpath: str, seq: int) -> str:
        return f"{self.folder(relpath)}{seq:0{_SEQ_DIGITS}d}"

    # -- writing ---------------------------------------------------------------------------
    def create(self, tenant: str, recording_id: str) -> SegmentedBlob:
        return SegmentedBlob(self, self.relpath(tenant, recording_id))

    def put_once(self, key: str, data: bytes) -> str:
        """PUT ``data`` at ``key`` unless something is there already; its SHA-256 (hex).

        A 412 (the key exists) is success only if the object holds these very bytes: a retry
        of ours whose first attempt landed. Anything else there is another writer's."""
        digest = hashlib.sha256(data).digest()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
        except ClientError as exc:
            if _status(exc) != 412:
                raise ObjectStoreError(f"writing {key}", exc) from None
            there = self.get_bytes(key)
            if hashlib.sha256(there).digest() != digest:
                raise ObjectStoreError(
                    f"writing {key}", "another writer's segment is already there"
                ) from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"writing {key}", exc) from None
        return digest.hex()

    def get_bytes(self, key: str) -> bytes:
        with contextlib.closing(self._get(key)) as body:
            data: bytes = body.read()
            return data

    def _get(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _status(exc) == 404:
                raise FileNotFoundError(errno.ENOENT, f"object store: no object {key}") from None
            raise ObjectStoreError(f"reading {key}", exc) from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"reading {key}", exc) from None

    # -- reading ---------------------------------------------------------------------------
    def open(
        self, relpath: str, *, size: int | None, segments: Sequence[Segment]
    ) -> AbstractContextManager[ByteSource]:
        if not segments:
            raise FileNotFoundError(errno.ENOENT, f"{relpath}: the catalog lists no segments")
        return contextlib.closing(SegmentStream(self, list(segments), limit=size))

    def listed(self, relpath: str) -> list[tuple[int, str, int, datetime]]:
        """(seq, key, size, last modified) of a blob's objects as the bucket lists them."""
        folder = self.folder(relpath)
        found = []
        for obj in self._list(folder):
            tail = obj["Key"][len(folder) :]
            if len(tail) == _SEQ_DIGITS and tail.isdigit():
                found.append((int(tail), obj["Key"], int(obj["Size"]), obj["LastModified"]))
        return sorted(found)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"listing {prefix}", exc) from None

    # -- the bucket's versioning and Object Lock ---------------------------------------------
    def _bucket_flags(self) -> tuple[bool, bool]:
        """Whether the bucket keeps versions (then a deletion must name each version, or the
        data stays behind a delete marker) and whether it has Object Lock (legal holds)."""
        if self._flags is None:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
                try:
                    config = self.client.get_object_lock_configuration(Bucket=self.bucket)
                    lock = (
                        config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                        == "Enabled"
                    )
                except ClientError as exc:
                    if _status(exc) not in (404, 400):
                        raise
                    lock = False
            except (ClientError, BotoCoreError) as exc:
                raise ObjectStoreError(f"reading bucket {self.bucket}'s settings", exc) from None
            # Suspended versioning keeps the versions made while it was on.
            self._flags = (status in ("Enabled", "Suspended") or lock, lock)
        return self._flags

    @property
    def object_lock(self) -> bool:
        return self._bucket_flags()[1]

    def _versions(self, prefix: str) -> Iterator[tuple[str, str | None, bool]]:
        """(key, version id, is a delete marker) of everything under ``prefix``, every version
        in a versioned bucket."""
        if not self._bucket_flags()[0]:
            for obj in self._list(prefix):
                yield obj["Key"], None, False
            return
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for version in page.get("Versions", []):
                    yield version["Key"], version["VersionId"], False
                for marker in page.get("DeleteMarkers", []):
                    yield marker["Key"], marker["VersionId"], True
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"listing versions of {prefix}", exc) from None

    def set_legal_hold(self, relpath: str, held: bool) -> bool:
        """Mirror a recording's legal hold on its objects (every version) where the bucket has
        Object Lock; False where it has not (the catalog's hold is then the only one)."""
        if not self.object_lock:
            return False
        status = "ON" if held else "OFF"
        for key, version, marker in self._versions(self.folder(relpath)):
            if marker:
                continue
            extra = {} if version is None else {"VersionId": version}
            try:
                self.client.put_object_legal_hold(
                    Bucket=self.bucket, Key=key, LegalHold={"Status": status}, **extra
                )
            except (ClientError, BotoCoreError) as exc:
                raise ObjectStoreError(f"setting the legal hold of {key} {status}", exc) from None
        return True

    # -- recovery and deletion -------------------------------------------------------------
    def recovery_source(self, relpath: str) -> S3Recovery | None:
        # Segments go out one at a time, in order: a gap can only be damage; keep what precedes.
        run = []
        for n, item in enumerate(self.listed(relpath)):
            if item[0] != n:
                break
            run.append(item)
        return S3Recovery(self, relpath, run) if run else None

    def delete(self, relpath: str) -> None:
        """Delete a blob's objects, every version of them in a versioned bucket (a held one
        refuses: ObjectStoreError)."""
        self._delete(list(self._versions(self.folder(relpath))))

    def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete ``keys``, every version of each in a versioned bucket."""
        if not keys:
            return
        if not self._bucket_flags()[0]:
            self._delete([(key, None, False) for key in keys])
            return
        wanted = set(keys)
        folders = {key.rsplit("/", 1)[0] + "/" for key in keys}
        self._delete(
            [entry for folder in folders for entry in self._versions(folder) if entry[0] in wanted]
        )

    def _delete(self, entries: Sequence[tuple[str, str | None, bool]]) -> None:
        objects = [
            {"Key": key} if version is None else {"Key": key, "VersionId": version}
            for key, version, _ in entries
        ]
        for start in range(0, len(objects), 1000):  # DeleteObjects takes at most 1000 keys
            batch = objects[start : start + 1000]
            try:
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise ObjectStoreError(f"deleting {len(batch)} objects", exc) from None
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise ObjectStoreError(
                    f"deleting {first.get('Key')}", first.get("Message") or first.get("Code")
                )

    def remove_orphans(self, live: Callable[[], Collection[str]]) -> int:
        """Delete the segments of blobs no kept recording names. The bucket is listed first,
        ``live()`` asked after: a recording's row is committed before its first segment, so
        one started in between is in ``live()``."""
        base = f"{self.location.prefix}/" if self.location.prefix else ""
        layout = re.compile("^" + re.escape(base) + rf"([0-9a-f]{{32}})/[0-9]{{{_SEQ_DIGITS}}}$")
        found: dict[str, list[tuple[str, str | None, bool]]] = {}
        for entry in self._versions(base):
            match = layout.match(entry[0])
            if match:
                found.setdefault(f"{self.url}/{match.group(1)}", []).append(entry)
        kept = set(live())
        removed = 0
        for relpath, entries in found.items():
            if relpath in kept:
                continue
            try:
                self._delete(entries)
            except ObjectStoreError as exc:  # e.g. a version still held: the next sweep
                log.warning("%s: left for the next sweep: %s", relpath, exc)
                continue
            removed += 1
        return removed

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.client.close()


class SegmentedBlob:
    """A blob being written as segments.

    ``write`` (one sealed chunk, on the event loop) only appends to the segment being filled;
    a full segment is handed to the thread pool, and the next one starts. While a segment is
    in flight the next one fills; it is sent as soon as the first is done, so one recording's
    segments are written one at a time, in order."""

    def __init__(self, store: S3BlobStore, relpath: str) -> None:
        self.store = store
        self.relpath = relpath
        self.error: VaultWriteError | None = None
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []  # sealed, not yet sent: one write each
        self._pending = 0  # their bytes
        self._next_seq = 0
        self._in_flight: Future[None] | None = None
        self._max_pending = max(store.segment_bytes, 1) * MAX_PENDING_FACTOR
        self._segments: list[Segment] = []
        self._hash = hashlib.sha256()  # of what the store holds, in order
        self.size = 0  # bytes the store holds
        self.units = 0  # chunks the store holds
        self.closed = False
        self.done: BlobInfo | None = None

    def write(self, data: bytes) -> None:
        """Take one sealed chunk. Never waits on the event loop: there, a store that lets the
        unsent chunks grow past twice ``segment_bytes`` fails the recording (a call's audio is
        not kept in memory without bound). Off the loop (an import, a tool writing faster than
        real time) it waits for the store instead, so the same bound holds."""
        with self._lock:
            if self.error is not None:
                raise self.failure()
            self._chunks.append(data)
            self._pending += len(data)
            if self._in_flight is None:
                if self._full():
                    self._send()
                return
            if self._pending <= self._max_pending:
                return
            if _on_event_loop():
                self._drop()
                self._fail("the object store has taken no segment for too long")
                raise self.failure()
            job = self._in_flight
        while True:  # backpressure, off the event loop
            job.result()
            with self._lock:
                if self.error is not None:
                    raise self.failure()
                if self._in_flight is None and self._full():
                    self._send()
                if self._in_flight is None or self._pending <= self._max_pending:
                    return
                job = self._in_flight

    def _full(self) -> bool:
        return (
            len(self._chunks) >= self.store.segment_chunks
            or self._pending >= self.store.segment_bytes
        )

    def _drop(self) -> None:
        self._chunks.clear()
        self._pending = 0

    def _send(self) -> None:
        """Hand the next segment to the pool (with ``_lock`` held, nothing in flight): the
        oldest unsent chunks, ``segment_chunks`` of them at most, within ``segment_bytes``
        unless one chunk alone is larger. Cut the same way however fast the store is."""
        count, size = 0, 0
        for chunk in self._chunks:
            if count and (
                count >= self.store.segment_chunks or size + len(chunk) > self.store.segment_bytes
            ):
                break
            count += 1
            size += len(chunk)
        data = b"".join(self._chunks[:count])
        del self._chunks[:count]
        self._pending -= size
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight = self.store._executor.submit(self._upload, seq, data, count)

    def _upload(self, seq: int, data: bytes, units: int) -> None:
        key = self.store.key(self.relpath, seq)
        try:
            digest = self.store.put_once(key, data)
        except OSError as exc:
            with self._lock:
                self._in_flight = None
                self._drop()
                self._fail(exc.strerror or str(exc))
            return
        with self._lock:
            self._segments.append(Segment(seq, key, len(data), digest))
            self._hash.update(data)
            self.size += len(data)
            self.units += units
            self._in_flight = None
            if self._chunks and not self.closed and self.error is None and self._full():
                self._send()

    def _fail(self, reason: str) -> None:
        error = VaultWriteError(f"writing {self.relpath}: {reason}")
        error.errno = errno.EIO
        error.strerror = reason
        self.error = error

    def failure(self) -> VaultWriteError:
        """The failure every write after it raises (afresh: see BlobFile.failure)."""
        assert self.error is not None
        return self.error.with_traceback(None)

    def wait(self) -> None:
        """Block until everything written so far is in the store (or has failed): the segment
        being filled is sent as it is."""
        while True:
            with self._lock:
                job = self._in_flight
                if job is None:
                    if not self._chunks or self.error is not None or self.closed:
                        return
                    self._send()
                    job = self._in_flight
            assert job is not None
            job.result()

    def finish(self) -> BlobInfo:
        if self.done is not None:
            return self.done
        self.wait()
        if self.error is not None:
            raise self.failure()
        return self._done()

    def abandon(self) -> BlobInfo:
        """Stop after a failure: keep the segments the store holds, drop the one unsent."""
        if self.done is not None:
            return self.done
        self._stop()
        return self._done()

    def discard(self) -> None:
        self._stop()
        self.store.delete(self.relpath)

    def _stop(self) -> None:
        with self._lock:
            self.closed = True
            self._drop()
            job = self._in_flight
        if job is not None:
            job.result()

    def _done(self) -> BlobInfo:
        with self._lock:
            self.closed = True
            self.done = BlobInfo(
                self.relpath, self.size, self._hash.hexdigest(), self.units, tuple(self._segments)
            )
        return self.done

    def open_kept(self) -> AbstractContextManager[ByteSource]:
        """What the store holds of this blob, to read back (after ``finish`` or ``abandon``)."""
        return contextlib.closing(SegmentStream(self.store, list(self._segments), limit=None))


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class SegmentStream:
    """The segments of one blob read as one stream, one segment at a time (never the whole
    blob in memory). Each segment's size and SHA-256 are checked against the catalog's as its
    end is read; ``limit`` ends the stream early (a recovered blob cut inside a segment)."""

    def __init__(self, store: S3BlobStore, segments: list[Segment], *, limit: int | None) -> None:
        self._store = store
        self._segments = segments
        self._limit = limit
        self._index = 0
        self._body: Any = None
        self._hash = hashlib.sha256()
        self._seen = 0  # bytes of the current segment read
        self._offset = 0

    def tell(self) -> int:
        return self._offset

    def read(self, size: int = -1, /) -> bytes:
        out = bytearray()
        want = size if size >= 0 else None
        if self._limit is not None:
            left = self._limit - self._offset
            want = left if want is None else min(want, left)
        while want is None or len(out) < want:
            piece = self._pull(_READ_BLOCK if want is None else min(want - len(out), _READ_BLOCK))
            if not piece:
                break
            out += piece
        self._offset += len(out)
        return bytes(out)

    def _pull(self, n: int) -> bytes:
        while self._index < len(self._segments):
            segment = self._segments[self._index]
            if self._body is None:
                self._body = self._store._get(segment.key)
                self._hash = hashlib.sha256()
                self._seen = 0
            try:
                piece: bytes = self._body.read(n)
            except (BotoCoreError, OSError) as exc:
                raise ObjectStoreError(f"reading {segment.key}", exc) from None
            if piece:
                self._hash.update(piece)
                self._seen += len(piece)
                if self._seen > segment.size:
                    raise self._differs(segment)
                return piece
            self._body.close()
            self._body = None
            if self._seen != segment.size or (
                segment.sha256 and self._hash.hexdigest() != segment.sha256
            ):
                raise self._differs(segment)
            self._index += 1
        return b""

    def _differs(self, segment: Segment) -> FormatError:
        return FormatError(
            None, None, f"segment {segment.seq} ({segment.key}) differs from the catalog's record"
        )

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class S3Recovery:
    """The segments a dead writer left (the run from segment 0 without a gap)."""

    def __init__(
        self, store: S3BlobStore, relpath: str, listed: list[tuple[int, str, int, datetime]]
    ) -> None:
        self.store = store
        self.relpath = relpath
        self.listed = listed

    def open(self) -> AbstractContextManager[ByteSource]:
        # No digests to check yet: the catalog has none for a blob whose writer died.
        segments = [Segment(seq, key, size, "") for seq, key, size, _ in self.listed]
        return contextlib.closing(SegmentStream(self.store, segments, limit=None))

    def keep(self, end_offset: int, units: int) -> BlobInfo:
        """Keep the segments holding the first ``end_offset`` bytes (what verified), with
        their digests; delete those after."""
        kept: list[Segment] = []
        whole = hashlib.sha256()
        start = 0
        for seq, key, _size, _ in self.listed:
            if start >= end_offset:
                break
            data = self.store.get_bytes(key)
            kept.append(Segment(seq, key, len(data), hashlib.sha256(data).hexdigest()))
            whole.update(data[: end_offset - start])
            start += len(data)
        self.store._delete_keys([key for seq, key, _, _ in self.listed if seq >= len(kept)])
        self.listed = self.listed[: len(kept)]
        return BlobInfo(self.relpath, min(start, end_offset), whole.hexdigest(), units, tuple(kept))

    def last_modified(self) -> datetime:
        stamp = max(modified for _, _, _, modified in self.listed)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
