"""The local store's one sync thread (storage/blobs.py PeriodicSync).

Every blob written to is made durable by a round of the store's thread, never by the writer's
own thread; a round covers every blob written since the last one, each once; a blob closed in
the meantime is not touched (its descriptor number may be another file's by then); a failed
sync is what the blob's next write and its finish raise; stopping the store syncs what is
left. ``os.fdatasync`` is replaced by a recorder that can hold a sync until the test lets it go.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from storage.blobs import LocalBlobStore
from storage.errors import VaultWriteError


class Syncs:
    """os.fdatasync, recorded: which descriptors, from which thread; ``hold`` blocks them."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.threads: set[str] = set()
        self.done = threading.Semaphore(0)
        self.entered = threading.Semaphore(0)
        self.hold = threading.Event()
        self.hold.set()
        self.fail: int | None = None

    def __call__(self, fd: int) -> None:
        self.entered.release()
        self.hold.wait()
        self.threads.add(threading.current_thread().name)
        self.fds.append(fd)
        try:
            if self.fail is not None:
                raise OSError(self.fail, os.strerror(self.fail))
        finally:
            self.done.release()

    def wait(self, n: int) -> None:
        for _ in range(n):
            assert self.done.acquire(timeout=10), "no sync came"


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    recorder = Syncs()
    monkeypatch.setattr("storage.blobs.os.fdatasync", recorder)
    return recorder


def test_a_round_syncs_each_written_blob_once_on_the_stores_thread(
    tmp_path: Path, syncs: Syncs
) -> None:
    store = LocalBlobStore(tmp_path, sync_interval=0)
    try:
        first, a, b = (store.create("t", c * 32) for c in "0ab")
        syncs.hold.clear()
        first.write(b"zero")  # a round starts and waits inside this blob's sync
        assert syncs.entered.acquire(timeout=10)
        a.write(b"one")  # meanwhile: the next round's
        b.write(b"two")
        a.write(b"three")  # already in it: once
        syncs.hold.set()
        syncs.wait(3)
        assert syncs.fds == [first._fd, a._fd, b._fd]  # in the order they were written
        assert syncs.threads == {"blob-sync"}
        a.write(b"four")  # after its sync: the next round takes it
        syncs.wait(1)
        assert syncs.fds[-1] == a._fd
        info = a.finish()
        assert info.size == len(b"onethreefour") and info.units == 3
        first.finish()
        b.finish()
    finally:
        store.close()


def test_a_blob_closed_before_its_round_is_not_synced(tmp_path: Path, syncs: Syncs) -> None:
    store = LocalBlobStore(tmp_path, sync_interval=0)
    try:
        first = store.create("t", "c" * 32)
        syncs.hold.clear()
        first.write(b"x")  # a round starts and waits inside this blob's sync
        assert syncs.entered.acquire(timeout=10)
        second = store.create("t", "d" * 32)
        second.write(b"y")  # marked for the next round
        second.discard()  # closed before that round comes
        syncs.hold.set()
        syncs.wait(1)
        first.finish()
    finally:
        store.close()
    assert syncs.fds == [first._fd]  # the discarded blob's descriptor was never synced


def test_a_failed_sync_is_raised_by_the_next_write_and_by_finish(
    tmp_path: Path, syncs: Syncs
) -> None:
    store = LocalBlobStore(tmp_path, sync_interval=0)
    try:
        blob = store.create("t", "e" * 32)
        syncs.fail = errno.EIO
        blob.write(b"chunk")
        syncs.wait(1)
        blob.wait()
        with pytest.raises(VaultWriteError):
            blob.write(b"more")
        with pytest.raises(VaultWriteError):
            blob.finish()
        blob.abandon()
    finally:
        store.close()


def test_stopping_the_store_syncs_what_is_dirty(tmp_path: Path, syncs: Syncs) -> None:
    store = LocalBlobStore(tmp_path, sync_interval=3600)  # no round would come for an hour
    blob = store.create("t", "f" * 32)
    blob.write(b"a")  # the first round is at once
    syncs.wait(1)
    blob.write(b"b")  # the next one an hour later, but the store stops first
    store.close()
    assert syncs.fds == [blob._fd, blob._fd]
