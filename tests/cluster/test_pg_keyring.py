"""The keyring in a key store shared by several nodes (``[storage] keyring_url``,
storage/keystore.py), on a real PostgreSQL: what one node seals another opens, a rotation or a
retirement on one node reaches the others, and the store stays apart from the catalog."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from ivr.cluster_demo.postgres import PostgresServer
from storage.keys import KEYRING_FILE, MASTER_KEY_FILE, Keyring, MasterKeyError, UnknownKey
from storage.keystore import TABLE, PostgresKeyringStore
from storage.vault import Vault, VaultError
from tests.test_vault import MASTER, frames_of, pattern


def clock() -> datetime:
    return datetime.now(UTC)


class Ticks:
    """An injectable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def urls(postgres: PostgresServer) -> tuple[str, str]:
    """A catalog database and a key store database of its own."""
    return postgres.database("catalog"), postgres.database("keys")


def node(tmp_path: Path, name: str, urls: tuple[str, str], **kw) -> Vault:
    catalog_url, keyring_url = urls
    return Vault(
        tmp_path / name,
        master_key=kw.pop("master_key", MASTER),
        fsync=False,
        catalog_url=catalog_url,
        keyring_url=keyring_url,
        **kw,
    )


def record(vault: Vault, tenant: str = "acme") -> tuple[str, list[tuple[int, int, bytes]]]:
    rec = vault.start_recording(tenant=tenant, lawful_basis="contract", purpose="orders")
    sent = [(t, i * 20, pattern(i, t)) for i in range(60) for t in (0, 1)]
    for frame in sent:
        rec.append(*frame)
    return rec.close().id, sent


def test_what_one_node_seals_another_opens(tmp_path, urls):
    a, b = node(tmp_path, "a", urls), node(tmp_path, "b", urls)
    try:
        rid, sent = record(a)
        # B shares the catalog and the keyring, not the data directory: it reads A's blob
        # through A's data directory only because these two "nodes" share a disk here; what
        # matters is that B unwraps A's data key with the shared KEK.
        row = b.get(rid)
        assert row.key_ref == "local/1"
        assert b.data_key(row) == a.data_key(row)
        assert a.keyring.lookup_key("acme") == b.keyring.lookup_key("acme")
        assert b.caller_hash("acme", "+46701234567") == a.caller_hash("acme", "+46701234567")
        assert frames_of(a, rid) == sent
        # Neither node wrote a keyring file of its own.
        assert not (tmp_path / "a" / KEYRING_FILE).exists()
        assert not (tmp_path / "b" / KEYRING_FILE).exists()
    finally:
        a.close()
        b.close()


def test_a_rotation_on_one_node_is_used_by_the_others_within_the_refresh(tmp_path, urls):
    keyring_url = urls[1]
    a = node(tmp_path, "a", urls)
    ticks = Ticks()
    store = PostgresKeyringStore(keyring_url, refresh_seconds=1.0, monotonic=ticks)
    other = Keyring(store, MASTER, clock)
    try:
        a.keyring.current("acme")
        assert other.current("acme")[0] == "local/1"
        rotated = a.keyring.rotate("acme")
        assert rotated.version == 2
        # Within the refresh interval the other node still wraps new data keys under version 1
        # (still valid: nothing retired it) ...
        assert other.current("acme")[0] == "local/1"
        # ... but a data key wrapped under version 2 elsewhere is opened at once, not refused.
        assert other.kek("acme", "local/2") == a.keyring.kek("acme", "local/2")
        ticks.now += 1.0
        assert other.current("acme") == ("local/2", a.keyring.kek("acme", "local/2"))
    finally:
        store.close()
        a.close()


def stored_document(keyring_url: str) -> dict:
    with psycopg.connect(keyring_url, autocommit=True) as conn:
        (document,) = conn.execute(f"SELECT document FROM {TABLE}").fetchone()
    return json.loads(bytes(document))


def test_retirement_reaches_every_node(tmp_path, urls):
    keyring_url = urls[1]
    a = node(tmp_path, "a", urls)
    ticks = Ticks()
    store = PostgresKeyringStore(keyring_url, monotonic=ticks)
    other = Keyring(store, MASTER, clock)
    try:
        a.keyring.current("acme")
        a.keyring.rotate("acme")
        assert other.kek("acme", "local/1") == a.keyring.kek("acme", "local/1")
        sealed_v1 = stored_document(keyring_url)["tenants"]["acme"]["keks"][0]
        assert sealed_v1["version"] == 1
        assert [k.version for k in a.keyring.retire("acme", 2)] == [1]
        ticks.now += 1.0
        with pytest.raises(UnknownKey):
            other.kek("acme", "local/1")
        # The document in the store no longer holds version 1's sealed copy.
        after = stored_document(keyring_url)
        assert [k["version"] for k in after["tenants"]["acme"]["keks"]] == [2]
        assert sealed_v1["wrapped"] not in json.dumps(after)
    finally:
        store.close()
        a.close()


def test_concurrent_rotations_on_two_nodes_make_distinct_versions(tmp_path, urls):
    a, b = node(tmp_path, "a", urls), node(tmp_path, "b", urls)
    try:
        a.keyring.current("acme")
        made: list[int] = []
        start = threading.Barrier(2)

        def rotate(vault: Vault) -> None:
            start.wait()
            for _ in range(5):
                made.append(vault.keyring.rotate("acme").version)

        threads = [threading.Thread(target=rotate, args=(v,)) for v in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(made) == list(range(2, 12))
        b.keyring.store.refresh_now()
        assert [k.version for k in b.keyring.list("acme")] == list(range(1, 12))
    finally:
        a.close()
        b.close()


def test_the_keyring_is_not_in_the_catalog_database(tmp_path, urls):
    catalog_url, keyring_url = urls
    a = node(tmp_path, "a", urls)
    try:
        a.keyring.current("acme")
        with psycopg.connect(catalog_url) as conn:
            assert conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None
        with psycopg.connect(keyring_url) as conn:
            assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 1
    finally:
        a.close()


def test_a_node_with_the_wrong_or_no_master_key_is_refused(tmp_path, urls):
    a = node(tmp_path, "a", urls)
    a.keyring.current("acme")
    a.close()
    with pytest.raises(MasterKeyError, match="does not open keyring"):
        node(tmp_path, "b", urls, master_key=bytes(32))
    # No master key at all: the key store holds a keyring, so none is made up beside it.
    with pytest.raises(MasterKeyError, match="key store holds a keyring"):
        Vault(
            tmp_path / "c",
            environ={},
            fsync=False,
            catalog_url=urls[0],
            keyring_url=urls[1],
        )
    assert not (tmp_path / "c" / MASTER_KEY_FILE).exists()


def test_a_data_directory_with_its_own_keyring_is_not_silently_switched(tmp_path, urls):
    Vault(tmp_path / "old", master_key=MASTER, fsync=False).close()
    with pytest.raises(VaultError, match="vault migrate --to-keyring"):
        node(tmp_path, "old", urls)


def test_nodes_starting_together_make_the_table_once(postgres: PostgresServer):
    """Several processes opening a fresh key store at the same moment (three nodes started
    together, tests/cluster/test_nodes.py) all open it: none fails on creating the table."""
    url = postgres.database("keys")
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            PostgresKeyringStore(url).close()
        except BaseException as exc:  # collected for the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
