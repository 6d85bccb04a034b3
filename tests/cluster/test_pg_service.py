"""The configured ``[storage] catalog_url`` reaches the service's and the CLI's vault."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from ivr.cli import main
from ivr.cluster_demo.postgres import PostgresServer
from ivr.config import load_config
from ivr.service import VAULT
from storage.vault import Vault
from tests.conftest import demo_service


async def test_the_service_keeps_its_catalog_where_the_configuration_says(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = postgres.database()
    config = dataclasses.replace(load_config(None), catalog_url=url)
    async with demo_service(tmp_path / "var", monkeypatch, config) as (app, _, _):
        vault = app[VAULT]
        assert vault.catalog.kind == "postgresql"
        vault.audit(actor="test", action="test.marker")
    assert not (tmp_path / "var" / "catalog.sqlite3").exists()
    with psycopg.connect(url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_events ORDER BY seq")]
    assert "test.marker" in actions


def test_the_cli_opens_the_configured_catalog(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
):
    url = postgres.database()
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    config = tmp_path / "ivr.toml"
    example = Path(__file__).parents[2] / "ivr" / "demo.toml"
    config.write_text(example.read_text() + f'\n[storage]\ncatalog_url = "{url}"\n')
    data = tmp_path / "var"
    with Vault(data, catalog_url=url) as vault:
        for n in range(3):
            vault.audit(actor="test", action="test.marker", target=str(n))
    args = ["audit", "verify", "--data-dir", str(data), "--config", str(config)]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out
    assert "3" in out.out  # the three entries in PostgreSQL, not an empty SQLite catalog
    assert not (data / "catalog.sqlite3").exists()
