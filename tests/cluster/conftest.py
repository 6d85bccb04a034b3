"""Fixtures of the suite against real servers (``make test-cluster``; docs/postgresql.md,
docs/s3.md; not collected by ``make test``).

``postgres``: one throwaway PostgreSQL server for the session (tests/cluster/postgres.py).
``catalogs_on_postgres``: every vault a test opens without a ``catalog_url`` gets its catalog in
a PostgreSQL database of its own (one per data directory, made on first use) instead of the
SQLite file, so the SQLite suite's test bodies run unchanged on PostgreSQL
(tests/cluster/test_pg_*.py import them).
``weed``: one SeaweedFS S3 server for the session (tests/cluster/seaweedfs.py); ``bucket``: a
fresh bucket on it per test; ``s3_env``: its endpoint and keys, in the environment too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

import storage.vault
from storage.catalog import Catalog
from tests.cluster import seaweedfs
from tests.cluster.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def catalogs_on_postgres(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> dict[Path, str]:
    """Each data directory's catalog database URL, by the directory (resolved)."""
    urls: dict[Path, str] = {}
    real = storage.vault.open_catalog

    def open_catalog(data_dir: Path, clock: Callable[[], datetime], url: str | None) -> Catalog:
        if url is None:
            key = data_dir.resolve()
            if key not in urls:
                urls[key] = postgres.database()
            url = urls[key]
        return real(data_dir, clock, url)

    monkeypatch.setattr(storage.vault, "open_catalog", open_catalog)
    return urls


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweedfs.SeaweedFS]:
    """One SeaweedFS S3 server for the session."""
    yield from seaweedfs.running(tmp_path_factory.mktemp("seaweedfs"))


@pytest.fixture
def bucket(weed: seaweedfs.SeaweedFS) -> str:
    """A fresh, empty bucket for one test."""
    name = "t-" + secrets.token_hex(8)
    weed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(weed: seaweedfs.SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The object store's variables, in the environment too (for processes the test starts)."""
    for name, value in weed.environ.items():
        monkeypatch.setenv(name, value)
    return weed.environ
