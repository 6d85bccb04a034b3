"""Every file the service or the command line writes that holds personal data or keys is 0600,
and every folder it makes for them 0700, whatever the umask (here 000, the worst case)."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.cli import main
from storage.vault import Vault

MASTER = bytes(range(32))
CALLER = "+46701234567"


@pytest.fixture(autouse=True)
def open_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    monkeypatch.delenv("IVR_DATA_DIR", raising=False)
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_tree(root: Path) -> None:
    assert mode(root) == 0o700, root
    paths = list(root.rglob("*"))
    assert paths
    for path in paths:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path


def vault_with_a_call(data: Path) -> str:
    with Vault(data, fsync=False) as v:
        call = v.open_call(tenant="demo", platform="test", caller=CALLER)
        rec = v.start_recording(
            tenant="demo", call_id=call, lawful_basis="contract", purpose="quality"
        )
        rec.append(0, 0, b"\xff" * 160)
        return rec.close().id


# -- the primitives -----------------------------------------------------------------------------
def test_primitives_ignore_the_umask(tmp_path: Path) -> None:
    from storage.files import atomic_write, open_private, private_dir, private_file

    deep = private_dir(tmp_path / "a" / "b" / "c")
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert mode(d) == 0o700, d
    with private_file(deep / "f") as fh:
        fh.write(b"x")
    assert mode(deep / "f") == 0o600
    with pytest.raises(FileExistsError):
        private_file(deep / "f").__enter__()
    atomic_write(deep / "g", b"y")
    assert mode(deep / "g") == 0o600
    lock = deep / "l.lock"
    lock.touch(mode=0o666)
    os.close(open_private(lock, os.O_RDWR | os.O_CREAT))
    assert mode(lock) == 0o600  # an existing lock file of ours is brought back to 0600


def test_an_existing_folder_is_tightened_only_when_asked(tmp_path: Path) -> None:
    from storage.files import private_dir

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    private_dir(mine)
    assert mode(mine) == 0o755  # e.g. the operator's own export folder
    private_dir(mine, tighten=True)
    assert mode(mine) == 0o700


# -- the vault ----------------------------------------------------------------------------------
def test_the_data_directory_and_all_under_it_while_open_and_after(tmp_path: Path) -> None:
    data = tmp_path / "new" / "var"
    v = Vault(data, environ={}, fsync=False)  # master.key generated
    call = v.open_call(tenant="demo", platform="test", caller=CALLER)
    rec = v.start_recording(tenant="demo", call_id=call, lawful_basis="contract", purpose="q")
    rec.append(0, 0, b"\xff" * 160)
    rec.wait_written()
    names = {p.name for p in data.rglob("*")}
    assert {"master.key", "keyring.json", "catalog.sqlite3", "locks", "blobs"} <= names
    assert any(n.endswith(".lock") for n in names) and any(n.endswith(".part") for n in names)
    assert any(n.endswith("-wal") for n in names)
    assert_private_tree(data)  # mid-recording: the writer lock, the .part blob, the WAL
    assert mode(tmp_path / "new") == 0o700  # a parent the vault had to make
    rec.close()
    v.keyring.rotate("demo")  # the keyring's lock file
    v.close()
    assert (data / "keyring.lock").exists()
    assert_private_tree(data)


def test_an_existing_data_directory_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "locks").mkdir(parents=True, mode=0o777)
    os.chmod(data, 0o755)
    os.chmod(data / "locks", 0o777)
    Vault(data, fsync=False).close()
    assert mode(data) == 0o700 and mode(data / "locks") == 0o700


# -- what the command line writes ----------------------------------------------------------------
def test_wav_and_vcon_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    rid = vault_with_a_call(data)
    base = ["--data-dir", str(data)]
    out = tmp_path / "out"
    out.mkdir()
    assert main(["recordings", "export", rid, "-o", str(out / "a.wav"), *base]) == 0
    assert (
        main(["recordings", "export", rid, "-o", str(out / "a.json"), "--format", "vcon", *base])
        == 0
    )
    ref = ["--format", "vcon", "--reference"]
    assert main(["recordings", "export", rid, "-o", str(out / "b.json"), *ref, *base]) == 0
    capsys.readouterr()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a.wav", "b.json", "b.wav"]
    for path in out.iterdir():
        assert mode(path) == 0o600, path


def test_subject_export_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    vault_with_a_call(data)
    out = tmp_path / "export.zip"
    argv = ["subject", "export", "--phone", CALLER, "-o", str(out), "--data-dir", str(data)]
    assert main(argv) == 0, capsys.readouterr().err
    assert mode(out) == 0o600


def test_breach_report_and_ropa_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    vault_with_a_call(data)
    base = ["--data-dir", str(data)]
    argv = ["breach", "open", "--detected-at", "2026-11-28T08:00:00Z", "--description", "lost"]
    assert main([*argv, "--scope", "storage", "--json", *base]) == 0
    breach = json.loads(capsys.readouterr().out)["id"]
    report = tmp_path / "report.md"
    assert main(["breach", "report", breach, "-o", str(report), *base]) == 0
    ropa = tmp_path / "ropa.md"
    assert main(["ropa", "-o", str(ropa), *base]) == 0
    capsys.readouterr()
    assert mode(report) == 0o600 and mode(ropa) == 0o600


def test_generated_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "acme"
    assert main(["keys", "generate", "--out", str(out)]) == 0
    capsys.readouterr()
    assert mode(tmp_path / "keys") == 0o700 and mode(out) == 0o700
    assert mode(out / "private.pem") == 0o600
    assert mode(out / "public.pem") == 0o644  # public by design: it goes into the configuration
