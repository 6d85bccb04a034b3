"""The catalog on a real PostgreSQL: migrations, one audit chain under concurrent writers, what
an erasure leaves in the database's own files, the shared and exclusive write transactions."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from ivr.cluster_demo.postgres import PostgresServer
from storage.audit import verify, verify_catalog
from storage.catalog import SCHEMA_VERSION, Catalog, CatalogError
from storage.vault import Vault

MASTER = bytes(range(32))
AUDIT_KEY = b"k" * 32


def clock() -> datetime:
    return datetime.now(UTC)


def open_pg(url: str, tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "unused.sqlite3", clock, url=url)
    catalog.audit_key = AUDIT_KEY
    return catalog


def columns_sqlite(path: Path) -> dict[str, list[str]]:
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    db.close()
    return found


def columns_pg(url: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name != 'catalog_schema'"
            " ORDER BY table_name, ordinal_position"
        ):
            found.setdefault(table, []).append(column)
    return found


def test_migrations_reach_the_same_schema_on_both(postgres: PostgresServer, tmp_path: Path):
    url = postgres.database()
    catalog = open_pg(url, tmp_path)
    assert catalog.kind == "postgresql" and catalog.schema_version == SCHEMA_VERSION
    catalog.close()
    lite = Catalog(tmp_path / "c.sqlite3", clock)
    assert lite.schema_version == SCHEMA_VERSION
    lite.close()
    assert columns_pg(url) == columns_sqlite(tmp_path / "c.sqlite3")
    # Opening again migrates nothing and keeps what is there.
    again = open_pg(url, tmp_path)
    with again.transaction() as db:
        again.insert_call(db, id="c1", tenant="t", platform="p", started_at="x")
    again.close()
    third = open_pg(url, tmp_path)
    assert third.call("c1") is not None and third.schema_version == SCHEMA_VERSION
    third.close()


def test_a_newer_schema_is_refused(postgres: PostgresServer, tmp_path: Path):
    url = postgres.database()
    open_pg(url, tmp_path).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE catalog_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(CatalogError, match="newer than this program"):
        open_pg(url, tmp_path)


def test_the_check_constraints_hold(postgres: PostgresServer, tmp_path: Path):
    catalog = open_pg(postgres.database(), tmp_path)
    values = dict(tenant="t", status="complete", purpose="p", started_at="x", codec="pcmu")
    values.update(sample_rate=8000, tracks="[]")
    with pytest.raises(psycopg.errors.CheckViolation), catalog.transaction() as db:
        catalog.insert_recording(db, id="r", lawful_basis="because", **values)
    with catalog.transaction() as db:  # the connection is usable after the refusal
        catalog.insert_recording(db, id="r", lawful_basis="consent", **values)
    assert catalog.recording("r").lawful_basis == "consent"
    catalog.close()


def test_a_bad_url_names_no_password(postgres: PostgresServer, tmp_path: Path):
    url = f"postgresql://someone:s3cret-pw@127.0.0.1:{postgres.port}/no_such_db"
    with pytest.raises(CatalogError) as raised:
        Catalog(tmp_path / "x", clock, url=url)
    assert "s3cret-pw" not in str(raised.value)
    with pytest.raises(CatalogError, match="must start with postgresql://"):
        Catalog(tmp_path / "x", clock, url="mysql://x/y")


def test_concurrent_writers_make_one_verifiable_chain(postgres: PostgresServer, tmp_path: Path):
    """Writers on separate connections (as separate processes or nodes would be) append at
    once; the chain has every entry, numbered without gaps, and verifies."""
    url = postgres.database()
    writers, each = 6, 40
    catalogs = [open_pg(url, tmp_path) for _ in range(writers)]
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                with catalogs[n].transaction(shared=True) as db:
                    catalogs[n].audit(db, actor=f"w{n}", action="test.event", detail={"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = catalogs[0].audit_events()
    assert [e.seq for e in events] == list(range(1, writers * each + 1))
    verdict = verify_catalog(catalogs[0])
    assert verdict.ok, verdict.problems
    # Every writer's entries are all there.
    for n in range(writers):
        assert sorted(e.detail["i"] for e in events if e.actor == f"w{n}") == list(range(each))
    # And the check can fail: an edited entry is found.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE audit_events SET actor = 'someone else' WHERE seq = 17")
    assert [p.seq for p in verify(catalogs[0].audit_events(), key=AUDIT_KEY).problems] == [17]
    for c in catalogs:
        c.close()


def test_an_exclusive_transaction_waits_for_shared_ones(postgres: PostgresServer, tmp_path: Path):
    """A shared write (a call's own rows) does not stop another shared one, but an exclusive one
    (an erasure, a re-wrap) waits until no shared one is open, and holds them off meanwhile."""
    url = postgres.database()
    a, b, c = (open_pg(url, tmp_path) for _ in range(3))
    order: list[str] = []
    in_shared = threading.Event()
    release = threading.Event()
    exclusive_done = threading.Event()

    def shared_a() -> None:
        with a.transaction(shared=True) as db:
            a.insert_call(db, id="a", tenant="t", platform="p", started_at="1")
            in_shared.set()
            release.wait(30)
            order.append("shared a commits")

    def exclusive_c() -> None:
        with c.transaction() as db:
            order.append("exclusive c runs")
            c.insert_call(db, id="c", tenant="t", platform="p", started_at="3")
        exclusive_done.set()

    ta = threading.Thread(target=shared_a)
    ta.start()
    assert in_shared.wait(30)
    with b.transaction(shared=True) as db:  # beside a: does not wait
        b.insert_call(db, id="b", tenant="t", platform="p", started_at="2")
    tc = threading.Thread(target=exclusive_c)
    tc.start()
    # c is waiting on a's shared lock: the server says so (pg_locks), without any sleep.
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(3000):
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if waiting and waiting[0] == 1:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the exclusive transaction never waited")
    assert not exclusive_done.is_set() and b.call("b") is not None
    release.set()
    ta.join(30)
    tc.join(30)
    assert order == ["shared a commits", "exclusive c runs"]
    for x in (a, b, c):
        x.close()


def test_erasure_vacuums_the_old_row_versions(postgres: PostgresServer, tmp_path: Path):
    """After an erasure, VACUUM has pruned the row versions that held the wrapped data key: no
    tuple of the table holds it, so no query, index or snapshot reaches it. Its bytes stay in the
    page's free space until a later row overwrites them (PostgreSQL has no secure_delete):
    docs/postgresql.md says so, and this test fails the day that changes."""
    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    from storage.lifecycle import erase

    def pages() -> list[tuple[bytes, list[bytes]]]:
        """Each page of the recordings table: its raw bytes, and the tuples it holds."""
        found = []
        with psycopg.connect(url, autocommit=True) as conn:
            count = conn.execute(
                "SELECT pg_relation_size('recordings') / current_setting('block_size')::int"
            ).fetchone()
            assert count is not None
            for n in range(count[0]):
                raw = conn.execute("SELECT get_raw_page('recordings', %s)", (n,)).fetchone()
                items = conn.execute(
                    "SELECT t_data FROM heap_page_items(get_raw_page('recordings', %s))"
                    " WHERE lp_flags = 1",
                    (n,),
                ).fetchall()
                assert raw is not None
                found.append((bytes(raw[0]), [bytes(i[0]) for i in items]))
        return found

    with Vault(tmp_path / "var", master_key=MASTER, fsync=False, catalog_url=url) as vault:
        rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
        rec.append(0, 0, b"\xff" * 160)
        row = rec.close()
        assert row.wrapped_dek is not None
        wrapped = row.wrapped_dek
        # The check can see it: in a tuple (the row's versions, not yet vacuumed).
        assert any(wrapped in t for _, tuples in pages() for t in tuples)
        erase(vault, row.id, reason="test", actor="test")
        assert vault.get(row.id).wrapped_dek is None
        after = pages()
        assert not any(wrapped in t for _, tuples in after for t in tuples)
        assert any(wrapped in raw for raw, _ in after)  # the free space: see the docstring
