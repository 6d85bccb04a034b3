"""The vault from asyncio: the slow disk work (fsync, the key row's commit) stays off the event
loop's thread; appending a sealed chunk to the page cache is all the loop ever does."""

from __future__ import annotations

import os
import threading

import storage.blobs
from storage.catalog import RecordingStatus
from storage.vault import Vault


async def test_recording_from_the_event_loop_never_fsyncs_on_its_thread(tmp_path, monkeypatch):
    vault = Vault(tmp_path, master_key=os.urandom(32), fsync=True)
    loop_thread = threading.get_ident()
    writers: set[int] = set()
    syncs: set[int] = set()
    real_write, real_fsync = os.write, os.fsync

    def write(fd, data):
        writers.add(threading.get_ident())
        return real_write(fd, data)

    def fsync(fd):
        syncs.add(threading.get_ident())
        return real_fsync(fd)

    monkeypatch.setattr(storage.blobs.os, "write", write)
    monkeypatch.setattr(storage.blobs.os, "fsync", fsync)
    recs = [
        await vault.astart_recording(tenant="acme", lawful_basis="consent", purpose="quality")
        for _ in range(3)
    ]
    writers.clear()
    syncs.clear()
    for i in range(500):
        for rec in recs:
            rec.append(0, i * 20, bytes([i % 256]) * 160)
    rows = [await rec.aclose() for rec in recs]
    assert all(r.status is RecordingStatus.COMPLETE and r.chunk_count == 10 for r in rows)
    assert writers  # chunks were written while the calls ran, not only at close
    assert syncs and loop_thread not in syncs
    vault.close()
