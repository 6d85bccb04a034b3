"""Fixtures of the suite against real servers (``make test-cluster``; docs/postgresql.md,
docs/s3.md; not collected by ``make test``).

``postgres``: one throwaway PostgreSQL server for the session (ivr/cluster_demo/postgres.py).
``catalogs_on_postgres``: every vault a test opens without a ``catalog_url`` gets its catalog in
a PostgreSQL database of its own (one per data directory, made on first use) instead of the
SQLite file, so the SQLite suite's test bodies run unchanged on PostgreSQL
(tests/cluster/test_pg_*.py import them).
``weed``: one SeaweedFS S3 server for the session (ivr/cluster_demo/seaweedfs.py); ``bucket``: a
fresh bucket on it per test; ``s3_env``: its endpoint and keys, in the environment too.
``vaults_on_postgres_and_s3``: on top of ``catalogs_on_postgres``, every vault a test opens
without a ``blob_url`` puts its new recordings' blobs under a prefix of its own (one per data
directory) in the test's bucket, so the same test bodies run on PostgreSQL + S3
(tests/cluster/test_pgs3_*.py import them).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import storage.vault
from ivr.cluster_demo import seaweedfs
from ivr.cluster_demo.postgres import PostgresServer
from storage.catalog import Catalog


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


@dataclass(frozen=True)
class Routed:
    """Where ``vaults_on_postgres_and_s3`` put a test's vaults."""

    bucket: str
    catalogs: dict[Path, str]  # each data directory's catalog database URL
    blob_urls: dict[Path, str]  # each data directory's s3://bucket/prefix


@pytest.fixture
def vaults_on_postgres_and_s3(
    catalogs_on_postgres: dict[Path, str],
    bucket: str,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Routed:
    """Every vault a test opens without a ``blob_url`` (the service's and the CLI's included,
    as they pass the configuration's None) writes to ``s3://<bucket>/<prefix>``, one prefix per
    data directory so a vault opened again on it (a restart, a recovery) finds its blobs. A
    vault given an ``environ`` of its own (a master key in it) gets the store's variables added,
    as the service's process would have them in its environment."""
    routed = Routed(bucket, catalogs_on_postgres, {})
    real = storage.vault.Vault.__init__

    @functools.wraps(real)
    def init(self: storage.vault.Vault, data_dir: Path, **kwargs: Any) -> None:
        if kwargs.get("blob_url") is None:
            key = Path(data_dir).resolve()
            if key not in routed.blob_urls:
                routed.blob_urls[key] = f"s3://{bucket}/v{len(routed.blob_urls)}"
            kwargs["blob_url"] = routed.blob_urls[key]
            if kwargs.get("environ") is not None:
                kwargs["environ"] = {**s3_env, **kwargs["environ"]}
        real(self, data_dir, **kwargs)

    monkeypatch.setattr(storage.vault.Vault, "__init__", init)
    return routed
