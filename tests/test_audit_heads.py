"""The audit head is published outside the catalog (start, schedule, shutdown), and
``ivr audit verify`` checks the chain against it by default, so a cut-off tail is found."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import stat

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli import main
from ivr.config import load_config
from ivr.service import VAULT, create_app
from storage.audit import HEADS_FILE_NAME, read_published_heads, verify_catalog
from storage.catalog import GENESIS_HASH
from storage.vault import Vault

MASTER = base64.b64encode(b"\x42" * 32).decode()


@pytest.fixture(autouse=True)
def master_key(monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", MASTER)
    monkeypatch.delenv("IVR_CONFIG", raising=False)


async def run_service(data, *, interval: float = 3600.0, entries: int = 0, config=None) -> None:
    """Start the service, add ``entries`` audit entries, give the schedule a few rounds, stop."""
    app = create_app(config or load_config(None), data, fsync=False, audit_head_interval=interval)
    server = TestServer(app)
    await server.start_server()
    try:
        for n in range(entries):
            app[VAULT].audit(actor="test", action="thing", target=str(n))
        if interval < 1:
            head = app[VAULT].catalog.audit_head()
            for _ in range(100):
                published = read_published_heads(data / HEADS_FILE_NAME)
                if (published[-1].seq, published[-1].head) == head:
                    break
                await asyncio.sleep(interval)
            await asyncio.sleep(10 * interval)  # rounds with nothing new to publish
    finally:
        await server.close()


def tamper(data, sql: str, params: tuple = ()) -> None:
    """Someone with write access to the catalog changes it while the service is stopped."""
    with Vault(data, create=False) as vault, vault.catalog.transaction() as db:
        db.execute(sql, params)


def chain_head(data) -> tuple[int, str]:
    with Vault(data, create=False) as vault:
        return vault.catalog.audit_head()


async def test_the_head_is_published_at_start_on_schedule_and_at_shutdown(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ivr.audit_heads")
    data = tmp_path / "var"
    await run_service(data, interval=0.02, entries=3)
    path = data / HEADS_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    published = read_published_heads(path)
    whys = [p.why for p in published]
    assert whys[0] == "start" and whys[-1] == "shutdown" and set(whys[1:-1]) == {"schedule"}
    start, scheduled, shutdown = published[0], published[1], published[-1]
    assert scheduled.seq >= start.seq + 3  # the three entries added while it ran (and a sweep)
    assert (shutdown.seq, shutdown.head) == chain_head(data)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit head:")]
    assert len(logged) == len(published) and shutdown.head in logged[-1]  # in the JSON log too
    # A second run appends; an unchanged head is not published again on schedule.
    await run_service(data, interval=0.02)
    published = read_published_heads(path)
    assert published[len(whys)].why == "start"
    assert published[-1].why == "shutdown"
    for before, line in itertools.pairwise(published):
        if line.why == "schedule":
            assert (line.seq, line.head) != (before.seq, before.head)


@pytest.mark.parametrize("cut", [1, 3, "all"])
async def test_a_cut_off_tail_fails_verify_by_default(tmp_path, capsys, cut):
    data = tmp_path / "var"
    await run_service(data, entries=5)
    args = ["audit", "verify", "--data-dir", str(data)]
    assert main(args) == 0
    assert "checked against 2 published head(s)" in capsys.readouterr().out
    seq, _ = chain_head(data)
    tamper(data, "DELETE FROM audit_events WHERE seq > ?", (0 if cut == "all" else seq - cut,))
    with Vault(data, create=False) as vault:  # the chain alone cannot tell
        assert verify_catalog(vault.catalog).ok
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "tail was cut" in out
    assert main([*args, "--no-published-head"]) == 0


async def test_a_cut_tail_written_on_is_found_and_logged_at_the_next_start(tmp_path, caplog):
    data = tmp_path / "var"
    await run_service(data, entries=5)
    seq, _ = chain_head(data)
    tamper(data, "DELETE FROM audit_events WHERE seq > ?", (seq - 3,))
    with caplog.at_level(logging.ERROR, logger="ivr.audit_heads"):
        await run_service(data, entries=5)  # the chain is as long as before, and links up
    assert any("is no longer in the chain" in r.getMessage() for r in caplog.records)
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1


async def test_an_appended_older_head_does_not_hide_a_cut(tmp_path, capsys):
    data = tmp_path / "var"
    await run_service(data, entries=5)
    path = data / HEADS_FILE_NAME
    early = read_published_heads(path)[0]  # the start of the run: still in the chain
    seq, _ = chain_head(data)
    tamper(data, "DELETE FROM audit_events WHERE seq > ?", (early.seq,))
    with path.open("a") as f:
        f.write(f"2099-01-01T00:00:00Z {early.seq} {early.head} forged\n")
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1
    assert f"entry {seq}" in capsys.readouterr().out


async def test_a_deleted_heads_file_is_found_when_the_service_named_it(tmp_path, capsys):
    data = tmp_path / "var"
    await run_service(data, entries=2)
    (data / HEADS_FILE_NAME).unlink()
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1
    assert "holds none" in capsys.readouterr().out


async def test_the_configured_heads_file_is_used(tmp_path, capsys):
    data, elsewhere = tmp_path / "var", tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "ivr.toml"
    config.write_text('[audit]\nhead_file = "elsewhere/heads.log"\nhead_interval_minutes = 1\n')
    loaded = load_config(config)
    assert loaded.audit_head_file == elsewhere / "heads.log"
    assert loaded.audit_head_interval_minutes == 1
    await run_service(data, entries=2, config=loaded)
    assert not (data / HEADS_FILE_NAME).exists()
    assert len(read_published_heads(elsewhere / "heads.log")) == 2
    # Found with --config, and without it from the service's own config.loaded entry.
    for extra in (["--config", str(config)], []):
        assert main(["audit", "verify", "--data-dir", str(data), *extra]) == 0
        assert "elsewhere/heads.log" in capsys.readouterr().out


def test_a_heads_file_in_a_missing_directory_is_a_configuration_error(tmp_path):
    from ivr.config import ConfigError

    config = tmp_path / "ivr.toml"
    config.write_text('[audit]\nhead_file = "nowhere/heads.log"\n')
    with pytest.raises(ConfigError, match=r"audit\.head_file: no such directory"):
        load_config(config)


def test_an_empty_chain_has_the_genesis_head(tmp_path):
    with Vault(tmp_path, create=True) as vault:
        assert vault.catalog.audit_head() == (0, GENESIS_HASH)
