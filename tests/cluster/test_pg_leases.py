"""Leases on PostgreSQL (storage/liveness.py, ivr/leadership.py, docs/cluster.md): processes
with separate data directories, as on separate machines, share one catalog and one bucket. A
writer on another machine is alive while its lease holds, by the database's clock; a process
"cut off" here stops renewing and its lease is moved into the past in the table, rather than
waited out. The nodes share a key store apart from the catalog (``keyring_url``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ivr.leadership import LEASE_NAME, LeaseLeadership, leadership_for
from storage import lifecycle
from storage.catalog import RecordingStatus
from storage.liveness import LeaseTerms
from storage.vault import Vault

MASTER = b"m" * 32
PAST = "2000-01-01T00:00:00.000000Z"


@pytest.fixture
def node(tmp_path: Path, postgres, weed, bucket):
    """Opens a vault as one node: its own data directory, the shared catalog and bucket."""
    url, keys = postgres.database(), postgres.database()
    opened: list[Vault] = []

    def open_node(name: str, **kw) -> Vault:
        vault = Vault(
            tmp_path / name,
            master_key=MASTER,
            fsync=False,
            catalog_url=url,
            keyring_url=keys,
            blob_url=f"s3://{bucket}/calls",
            environ=weed.environ,
            **kw,
        )
        opened.append(vault)
        return vault

    open_node.keyring_url = keys  # type: ignore[attr-defined]
    yield open_node
    for vault in opened:
        if vault._renewer is not None:
            vault._renewer.stop()
        vault.open_recordings.clear()
        vault.close()


def cut_off(vault: Vault) -> None:
    """The node stops renewing (a lost network, a stopped process) and its lease lapses."""
    assert vault._renewer is not None
    vault._renewer.stop()
    with vault.catalog.transaction() as db:
        db.execute(
            "UPDATE processes SET lease_expires_at = ? WHERE writer_id = ?", (PAST, vault.writer_id)
        )


def recording(vault: Vault, seconds: int = 7):
    rec = vault.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    for i in range(seconds * 50):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    rec.wait_written()  # whole segments stored; the rest still being built
    return rec


def test_a_node_is_alive_while_its_lease_holds_by_the_databases_clock(node):
    a, b = node("a"), node("b")
    assert b.writer_alive(a.writer_id) and a.writer_alive(b.writer_id)
    cut_off(a)
    assert not b.writer_alive(a.writer_id)
    assert a.lease is not None and not a.lease.renew()  # it finds out at its next renewal...
    assert a.lease.lost == 1 and b.writer_alive(a.writer_id)  # ...and registers again
    # A process on this node's own data directory is judged by its lock, at once.
    local = Vault(
        b.data_dir,
        master_key=MASTER,
        fsync=False,
        catalog_url=b.catalog._url,
        keyring_url=node.keyring_url,
    )
    writer = local.writer_id
    assert b.writer_alive(writer)
    local.close()
    assert not b.writer_alive(writer)


def test_a_cut_off_nodes_recording_is_finished_by_another_and_its_late_end_changes_nothing(node):
    a = node("a")
    rec = recording(a)
    b = node("b")
    assert b.recover() == []  # its writer's lease holds
    cut_off(a)
    (result,) = b.recover()
    assert result.status is RecordingStatus.INCOMPLETE
    row = b.get(rec.id)
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 6
    with b.open_reader(rec.id) as reader:
        assert [f.timestamp_ms for f in reader.frames()] == [i * 20 for i in range(300)]
    # The node was only cut off: it goes on, and ends the recording later.
    for i in range(350, 500):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    late = rec.close()
    assert late.status is RecordingStatus.INCOMPLETE and late.chunk_count == 6
    again = b.get(rec.id)
    assert again.blob_digest == row.blob_digest and again.status_reason == row.status_reason
    with b.open_reader(rec.id) as reader:
        assert sum(1 for _ in reader.frames()) == 300
    actions = [e.action for e in b.catalog.audit_events()]
    assert actions.count("recording.recovered") == 1
    # Its later audio went to the bucket beside what was kept: unlisted, so unread, and gone
    # with the recording when it is erased.
    store = b.blob_store(row.blob_path)
    listed = [key for _, key, _, _ in store.listed(row.blob_path)]
    kept = [s.key for s in b.segments(rec.id)]
    assert len(listed) > len(kept) and listed[: len(kept)] == kept
    lifecycle.erase(b, rec.id, reason="asked", actor="test")
    assert store.listed(row.blob_path) == []


def test_two_recoverers_never_both_claim_one_recording(node):
    a = node("a")
    rec = recording(a)
    b, c = node("b"), node("c")
    cut_off(a)
    side = c.catalog.open_side()
    try:
        with c.catalog.claim_recording(side, rec.id) as claimed:
            assert claimed is not None  # c holds the row (as if recovering it now)
            assert b.recover() == []  # skipped, not waited for
            assert b.get(rec.id).status is RecordingStatus.RECORDING
        (result,) = b.recover()  # c let go without finishing it: b does
        assert result.recording_id == rec.id
        with c.catalog.claim_recording(side, rec.id) as claimed:
            assert claimed is None  # no longer recording: nothing to claim
    finally:
        side.close()


def test_concurrent_recoverers_finish_each_recording_once(node):
    a = node("a")
    recs = [recording(a, seconds=3) for _ in range(4)]
    recoverers = [node(n) for n in ("b", "c", "d")]
    cut_off(a)
    results: list[list] = []
    start = threading.Barrier(len(recoverers))

    def run(vault: Vault) -> None:
        start.wait()
        results.append(vault.recover())

    threads = [threading.Thread(target=run, args=(v,)) for v in recoverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = sorted(r.recording_id for batch in results for r in batch)
    assert finished == sorted(r.id for r in recs)
    events = [e for e in a.catalog.audit_events() if e.action == "recording.recovered"]
    assert sorted(e.target for e in events) == finished


def test_one_node_runs_the_background_jobs_until_its_lease_lapses(node):
    terms = LeaseTerms(10, 3)
    a, b = node("a"), node("b")
    first, second = leadership_for(a, terms), leadership_for(b, terms)
    assert isinstance(first, LeaseLeadership) and isinstance(second, LeaseLeadership)
    try:
        assert first.claim() and first.held
        assert not second.claim() and not second.held
        with a.catalog.transaction() as db:  # a stops renewing; its lease lapses
            db.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (PAST, LEASE_NAME))
        assert second.claim() and second.held
        assert not first.claim() and not first.held  # it learns at its next renewal
        second.release()
        assert first.claim()
    finally:
        first.release()
        second.release()


def test_a_leader_stops_believing_when_its_own_view_of_the_lease_runs_out(node):
    a = node("a")
    now = [100.0]
    leader = LeaseLeadership(a, LeaseTerms(10, 3), monotonic=lambda: now[0])
    try:
        assert leader.claim() and leader.held
        now[0] += 9.9
        assert leader.held
        now[0] += 0.2  # 10 s since the renewal was sent, whatever the database says
        assert not leader.held
    finally:
        leader.release()


def test_a_local_recording_is_finished_only_where_its_blob_is(tmp_path, postgres):
    url, keys = postgres.database(), postgres.database()

    def vault(data: Path) -> Vault:
        return Vault(data, master_key=MASTER, fsync=False, catalog_url=url, keyring_url=keys)

    first = vault(tmp_path / "here")
    rec = recording(first)
    first.open_recordings.clear()  # left open (a finalisation the disk refused), then closed:
    first.close()  # its lock file and its lease are gone with it
    elsewhere = vault(tmp_path / "elsewhere")
    try:
        assert elsewhere.recover() == []  # the blob is on another machine's disk
        assert elsewhere.get(rec.id).status is RecordingStatus.RECORDING
    finally:
        elsewhere.close()
    here = vault(tmp_path / "here")  # the next start where the blob is
    try:
        row = here.get(rec.id)
        assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 6
    finally:
        here.close()
