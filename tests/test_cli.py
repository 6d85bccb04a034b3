"""End-to-end tests of the ``ivr`` command line, run in-process through ``ivr.cli.main``."""

from __future__ import annotations

import base64
import errno
import itertools
import json
import logging
import os
import socket
import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import storage.blobs
from ivr.cli import main
from storage.vault import Vault

KEY_A = "11" * 32  # 32 bytes as 64 hex digits
KEY_B = base64.b64encode(bytes(range(32))).decode()  # a different, valid key as base64
IN_RATE = 44100
EVIDENCE = "consent given to the agent at 10:02, ticket 4711"
OUT_RATE = 8000


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVR_MASTER_KEY", raising=False)
    monkeypatch.delenv("IVR_DATA_DIR", raising=False)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IVR_MASTER_KEY", KEY_A)
    return KEY_A


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def error_line(err: str) -> str:
    """The CLI reports a failure as exactly one ``ivr: error: ...`` line on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ivr: error: "), err
    return lines[0]


def make_wav(
    path: Path,
    seconds: float = 1.51,
    freqs: tuple[float, ...] = (440.0, 660.0),
    rate: int = IN_RATE,
) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    cols = [0.5 * np.sin(2 * np.pi * f * t) for f in freqs]
    sf.write(path, np.stack(cols, axis=1).astype(np.float32), rate, subtype="PCM_16")
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / x.size)


def import_rec(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    wav: Path,
    tenant: str = "acme",
    basis: str = "consent",
) -> dict[str, Any]:
    return run_json(
        capsys,
        "recordings",
        "import",
        wav,
        "--data-dir",
        data_dir,
        "--tenant",
        tenant,
        "--lawful-basis",
        basis,
        "--purpose",
        "quality",
        "--evidence",
        EVIDENCE,
    )


def export_rec(
    capsys: pytest.CaptureFixture[str], data_dir: Path, rec_id: str, out: Path, *extra: str
) -> tuple[int, str, str]:
    return run(capsys, "recordings", "export", rec_id, "-o", out, "--data-dir", data_dir, *extra)


def count_rows(data_dir: Path, table: str = "recordings") -> int:
    db = sqlite3.connect(data_dir / "catalog.sqlite3")
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def read_wav(path: Path) -> tuple[np.ndarray, sf._SoundFileInfo]:
    info = sf.info(path)
    samples, _ = sf.read(path, dtype="int16", always_2d=True)
    return samples, info


# -- import, list, show, export ---------------------------------------------------------------
def test_import_list_show_export_stereo(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=1.51)

    row = import_rec(capsys, data_dir, wav, basis="legitimate_interests")
    assert row["status"] == "complete"
    assert row["lawful_basis"] == "legitimate_interests"
    assert row["purpose"] == "quality"
    assert row["tenant"] == "acme"
    assert row["tracks"] == ["caller", "agent"]
    assert row["chunk_count"] >= 1
    assert abs(row["duration_ms"] - 1510) <= 20
    # Key material and internal paths never leave the catalog.
    assert "wrapped_dek" not in row and "blob_path" not in row

    listed = run_json(capsys, "recordings", "list", "--data-dir", data_dir)
    assert [r["id"] for r in listed] == [row["id"]]
    assert listed[0] == row

    shown = run_json(capsys, "recordings", "show", row["id"], "--data-dir", data_dir)
    assert shown == row

    out = tmp_path / "out.wav"
    code, stdout, err = export_rec(capsys, data_dir, row["id"], out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["recording_id"] == row["id"]
    assert result["channels"] == 2
    assert result["sample_rate"] == OUT_RATE
    assert Path(result["output"]) == out

    samples, info = read_wav(out)
    assert info.format == "WAV"
    assert info.subtype == "PCM_16"
    assert info.samplerate == OUT_RATE
    assert info.channels == 2
    assert abs(info.frames / OUT_RATE - 1.51) <= 0.020
    assert abs(result["duration_ms"] - 1510) <= 20
    assert abs(dominant_hz(samples[:, 0], OUT_RATE) - 440) < 5
    assert abs(dominant_hz(samples[:, 1], OUT_RATE) - 660) < 5
    # No temporary file is left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.wav", "out.wav", "var"]


def test_list_filters_by_tenant_and_status(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=0.5)
    a = import_rec(capsys, data_dir, wav, tenant="acme")
    b = import_rec(capsys, data_dir, wav, tenant="beta")

    both = run_json(capsys, "recordings", "list", "--data-dir", data_dir)
    assert {r["id"] for r in both} == {a["id"], b["id"]}
    only_b = run_json(capsys, "recordings", "list", "--data-dir", data_dir, "--tenant", "beta")
    assert [r["id"] for r in only_b] == [b["id"]]
    complete = run_json(
        capsys, "recordings", "list", "--data-dir", data_dir, "--status", "complete"
    )
    assert len(complete) == 2
    failed = run_json(capsys, "recordings", "list", "--data-dir", data_dir, "--status", "failed")
    assert failed == []


def test_mono_file_exports_as_mono(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "mono.wav", seconds=1.0, freqs=(440.0,), rate=48000)
    row = import_rec(capsys, data_dir, wav)
    assert row["status"] == "complete"
    assert row["tracks"] == ["caller"]

    out = tmp_path / "mono-out.wav"
    code, stdout, err = export_rec(capsys, data_dir, row["id"], out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["channels"] == 1
    samples, info = read_wav(out)
    assert info.channels == 1
    assert info.samplerate == OUT_RATE
    assert info.subtype == "PCM_16"
    assert abs(info.frames / OUT_RATE - 1.0) <= 0.020
    assert abs(dominant_hz(samples[:, 0], OUT_RATE) - 440) < 5


def test_export_is_audited_with_reason(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.5))
    reason = "subject access request #4711"
    code, _, err = export_rec(capsys, data_dir, row["id"], tmp_path / "o.wav", "--reason", reason)
    assert code == 0, err

    with Vault(Path(data_dir), create=False) as vault:
        events = vault.catalog.audit_events()
    exported = [e for e in events if e.action == "recording.exported"]
    assert len(exported) == 1
    assert exported[0].target == row["id"]
    assert exported[0].tenant == "acme"
    assert exported[0].detail["reason"] == reason
    assert any(e.action == "recording.imported" and e.target == row["id"] for e in events)
    # The audit log is a hash chain.
    for prev, event in itertools.pairwise(events):
        assert event.prev_hash == prev.hash


def test_export_to_directory_fails(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.3))
    target = tmp_path / "somedir"
    target.mkdir()
    code, _, err = export_rec(capsys, data_dir, row["id"], target)
    assert code == 1
    assert "directory" in error_line(err)
    assert list(target.iterdir()) == []


# -- keys -------------------------------------------------------------------------------------
def test_keys_list_and_rotate(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=1.0)
    first = import_rec(capsys, data_dir, wav)
    assert first["key_ref"] == "local/1"

    keys = run_json(capsys, "keys", "list", "--data-dir", data_dir)
    assert len(keys) == 1
    assert keys[0]["tenant"] == "acme"
    assert keys[0]["version"] == 1
    assert keys[0]["key_ref"] == "local/1"
    assert keys[0]["current"] is True

    rotated = run_json(capsys, "keys", "rotate", "--tenant", "acme", "--data-dir", data_dir)
    assert rotated["tenant"] == "acme"
    assert rotated["version"] == 2
    assert rotated["fingerprint"] != keys[0]["fingerprint"]

    keys = run_json(capsys, "keys", "list", "--data-dir", data_dir, "--tenant", "acme")
    assert [(k["version"], k["current"]) for k in keys] == [(1, False), (2, True)]
    assert keys[1]["fingerprint"] == rotated["fingerprint"]

    second = import_rec(capsys, data_dir, wav)
    assert second["key_ref"] == "local/2"
    shown_first = run_json(capsys, "recordings", "show", first["id"], "--data-dir", data_dir)
    assert shown_first["key_ref"] == "local/1"

    for rec in (first, second):
        out = tmp_path / f"{rec['id']}.wav"
        code, _, err = export_rec(capsys, data_dir, rec["id"], out)
        assert code == 0, err
        samples, info = read_wav(out)
        assert info.channels == 2
        assert abs(dominant_hz(samples[:, 0], OUT_RATE) - 440) < 5
        assert abs(dominant_hz(samples[:, 1], OUT_RATE) - 660) < 5

    with Vault(Path(data_dir), create=False) as vault:
        events = vault.catalog.audit_events()
    assert any(e.action == "key.rotated" and e.target == "local/2" for e in events)


def test_keys_list_filters_by_tenant(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=0.3)
    import_rec(capsys, data_dir, wav, tenant="acme")
    import_rec(capsys, data_dir, wav, tenant="beta")
    all_keys = run_json(capsys, "keys", "list", "--data-dir", data_dir)
    assert sorted(k["tenant"] for k in all_keys) == ["acme", "beta"]
    beta = run_json(capsys, "keys", "list", "--data-dir", data_dir, "--tenant", "beta")
    assert [(k["tenant"], k["version"], k["current"]) for k in beta] == [("beta", 1, True)]


def test_rotate_unknown_tenant_fails(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.3))
    before = (data_dir / "keyring.json").read_bytes()

    code, out, err = run(capsys, "keys", "rotate", "--tenant", "nobody", "--data-dir", data_dir)
    assert code == 1
    assert out == ""
    line = error_line(err)
    assert "'nobody'" in line
    assert "no keys" in line
    assert (data_dir / "keyring.json").read_bytes() == before


# -- master key -------------------------------------------------------------------------------
def test_first_use_generates_master_key_file(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    row = import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.3))
    assert row["status"] == "complete"

    key_file = data_dir / "master.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip())) == 32
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "master key" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "IVR_MASTER_KEY" in warnings[0].getMessage()

    # Later use reads the file: no new key, no new warning, recordings still open.
    caplog.clear()
    key_text = key_file.read_text()
    code, _, err = export_rec(capsys, data_dir, row["id"], tmp_path / "o.wav")
    assert code == 0, err
    assert key_file.read_text() == key_text
    assert not [r for r in caplog.records if "generated a master key" in r.getMessage()]


def test_wrong_master_key_fails_and_changes_nothing(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", KEY_A)
    wav = make_wav(tmp_path / "call.wav", seconds=0.3)
    row = import_rec(capsys, data_dir, wav)
    keyring_before = (data_dir / "keyring.json").read_bytes()
    rows_before = count_rows(data_dir)

    monkeypatch.setenv("IVR_MASTER_KEY", KEY_B)
    code, out, err = run(
        capsys,
        *("recordings", "import", wav, "--data-dir", data_dir, "--tenant", "acme"),
        *("--lawful-basis", "consent", "--evidence", EVIDENCE, "--purpose", "quality"),
    )
    assert code == 1
    assert out == ""
    assert "master key" in error_line(err)
    for argv in (
        ("recordings", "list"),
        ("keys", "list"),
        ("recordings", "export", row["id"], "-o", str(tmp_path / "o.wav")),
    ):
        code, _, err = run(capsys, *argv, "--data-dir", data_dir)
        assert code == 1, argv
        assert "master key" in error_line(err)
    assert not (tmp_path / "o.wav").exists()

    assert count_rows(data_dir) == rows_before
    assert (data_dir / "keyring.json").read_bytes() == keyring_before
    assert not (data_dir / "master.key").exists()

    monkeypatch.setenv("IVR_MASTER_KEY", KEY_A)
    listed = run_json(capsys, "recordings", "list", "--data-dir", data_dir)
    assert [r["id"] for r in listed] == [row["id"]]


@pytest.mark.parametrize("existing_vault", [False, True])
def test_malformed_master_key_fails(
    existing_vault: bool,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=0.3)
    if existing_vault:
        monkeypatch.setenv("IVR_MASTER_KEY", KEY_A)
        import_rec(capsys, data_dir, wav)
    monkeypatch.setenv("IVR_MASTER_KEY", "short")
    code, out, err = run(
        capsys,
        *("recordings", "import", wav, "--data-dir", data_dir, "--tenant", "acme"),
        *("--lawful-basis", "consent", "--evidence", EVIDENCE, "--purpose", "quality"),
    )
    assert code == 1
    assert out == ""
    line = error_line(err)
    assert "IVR_MASTER_KEY" in line
    assert "64 hex digits or base64" in line
    assert "32" in line
    assert not (data_dir / "master.key").exists()
    if existing_vault:
        assert count_rows(data_dir) == 1
    else:
        assert not (data_dir / "keyring.json").exists()
        assert not (data_dir / "catalog.sqlite3").exists()


def test_missing_master_key_with_existing_keyring_fails(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.3))
    (data_dir / "master.key").unlink()

    for argv in (
        ("recordings", "list"),
        ("keys", "list"),
        ("recordings", "show", row["id"]),
        ("recordings", "export", row["id"], "-o", str(tmp_path / "o.wav")),
    ):
        code, out, err = run(capsys, *argv, "--data-dir", data_dir)
        assert code == 1, argv
        assert out == ""
        assert "IVR_MASTER_KEY" in error_line(err)
    # A new key must not be invented next to a keyring it cannot open.
    assert not (data_dir / "master.key").exists()
    assert not (tmp_path / "o.wav").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffthis is not a keyring\x13\x37" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _json_array(path: Path) -> None:
    path.write_text("[]\n")


def _alter_wrapped(path: Path) -> None:
    doc = json.loads(path.read_text())
    kek = doc["tenants"]["acme"]["keks"][0]
    raw = bytearray(base64.b64decode(kek["wrapped"]))
    raw[len(raw) // 2] ^= 0x01
    kek["wrapped"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize(
    "damage", [_truncate, _garbage, _empty, _json_array, _alter_wrapped], ids=lambda f: f.__name__
)
def test_corrupt_keyring_fails(
    damage: Any,
    key_env: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=0.3)
    row = import_rec(capsys, data_dir, wav)
    damage(data_dir / "keyring.json")
    damaged = (data_dir / "keyring.json").read_bytes()

    for argv in (
        ("keys", "list"),
        ("recordings", "list"),
        ("recordings", "export", row["id"], "-o", str(tmp_path / "o.wav")),
        (
            *("recordings", "import", str(wav), "--tenant", "acme"),
            *("--lawful-basis", "consent", "--evidence", EVIDENCE, "--purpose", "quality"),
        ),
    ):
        code, out, err = run(capsys, *argv, "--data-dir", data_dir)
        assert code == 1, argv
        assert out == ""
        line = error_line(err)
        assert "corrupt" in line or "damaged" in line, line
        assert "keyring" in line
    assert not (tmp_path / "o.wav").exists()
    assert count_rows(data_dir) == 1
    # The damaged keyring is left as it was for the operator to restore, not overwritten.
    assert (data_dir / "keyring.json").read_bytes() == damaged


# -- unknown ids and bad input ----------------------------------------------------------------
def test_unknown_recording_id(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import_rec(capsys, data_dir, make_wav(tmp_path / "call.wav", seconds=0.3))
    bogus = "rec_00000000000000000000"

    code, out, err = run(capsys, "recordings", "show", bogus, "--data-dir", data_dir)
    assert code == 1
    assert out == ""
    assert bogus in error_line(err)

    out_wav = tmp_path / "nope.wav"
    code, out, err = export_rec(capsys, data_dir, bogus, out_wav)
    assert code == 1
    assert out == ""
    assert bogus in error_line(err)
    assert not out_wav.exists()
    assert not list(tmp_path.glob("*nope*"))

    with Vault(Path(data_dir), create=False) as vault:
        assert not [e for e in vault.catalog.audit_events() if e.action == "recording.exported"]


def _three_channels(path: Path) -> None:
    make_wav(path, seconds=0.3, freqs=(440.0, 660.0, 880.0))


def _text_file(path: Path) -> None:
    path.write_text("this is a text file, not a WAV\n" * 20)


def _missing(path: Path) -> None:
    pass


@pytest.mark.parametrize("existing_vault", [True, False], ids=["vault", "no-vault"])
@pytest.mark.parametrize(
    "make_bad", [_three_channels, _text_file, _missing], ids=lambda f: f.__name__
)
def test_unsupported_input_is_rejected(
    make_bad: Any,
    existing_vault: bool,
    key_env: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if existing_vault:
        import_rec(capsys, data_dir, make_wav(tmp_path / "good.wav", seconds=0.3))
    bad = tmp_path / "bad input.wav"
    make_bad(bad)

    code, out, err = run(
        capsys,
        *("recordings", "import", bad, "--data-dir", data_dir, "--tenant", "acme"),
        *("--lawful-basis", "consent", "--evidence", EVIDENCE, "--purpose", "quality"),
    )
    assert code == 1
    assert out == ""
    assert str(bad) in error_line(err)
    if existing_vault:
        assert count_rows(data_dir) == 1
        assert count_rows(data_dir, "calls") == 1
    else:
        assert not (data_dir / "catalog.sqlite3").exists()


def test_invalid_lawful_basis_is_usage_error(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=0.3)
    with pytest.raises(SystemExit) as info:
        main(
            [
                *("recordings", "import", str(wav), "--data-dir", str(data_dir)),
                *("--tenant", "acme", "--lawful-basis", "because", "--purpose", "quality"),
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--lawful-basis" in err
    assert "legitimate_interests" in err
    assert not (data_dir / "catalog.sqlite3").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ("recordings", "list"),
        ("recordings", "show", "rec_x"),
        ("keys", "list"),
        ("keys", "rotate", "--tenant", "acme"),
    ],
)
def test_commands_on_a_dir_without_vault(
    argv: tuple[str, ...], key_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    code, out, err = run(capsys, *argv, "--data-dir", empty)
    assert code == 1
    assert out == ""
    line = error_line(err)
    assert "no vault" in line
    assert str(empty) in line
    assert not empty.exists()


# -- full disk --------------------------------------------------------------------------------
class _FullDiskOs:
    """Stands in for ``os`` inside ``storage.blobs`` only: blob writes fill up after ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        room = self.limit - self.written
        if room <= 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, memoryview(data)[:room])  # a short write, as a filling disk gives
        self.written += n
        return n


def _import_with_full_disk(
    limit: int,
    data_dir: Path,
    wav: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str, _FullDiskOs]:
    fake = _FullDiskOs(limit)
    with monkeypatch.context() as m:
        m.setattr(storage.blobs, "os", fake)
        code, out, err = run(
            capsys,
            *("recordings", "import", wav, "--data-dir", data_dir, "--tenant", "acme"),
            *(
                "--lawful-basis",
                "consent",
                "--evidence",
                EVIDENCE,
                "--purpose",
                "quality",
                "--json",
            ),
        )
    return code, out, err, fake


def test_full_disk_during_import_keeps_a_verified_prefix(
    key_env: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wav = make_wav(tmp_path / "long.wav", seconds=10.0)
    earlier = import_rec(capsys, data_dir, wav)
    assert earlier["status"] == "complete"

    code, out, err, fake = _import_with_full_disk(40_000, data_dir, wav, capsys, monkeypatch)
    assert fake.refused >= 1
    assert code == 1
    line = error_line(err)
    assert "disk full" in line or "No space left" in line, line

    rows = run_json(capsys, "recordings", "list", "--data-dir", data_dir)
    assert len(rows) == 2
    failed = next(r for r in rows if r["id"] != earlier["id"])
    assert failed["id"] in line
    assert failed == json.loads(out)  # what import printed is what the catalog holds
    assert failed["status"] == "incomplete"
    assert failed["chunk_count"] >= 1
    assert "disk full" in failed["status_reason"]
    listed = run_json(
        capsys, "recordings", "list", "--data-dir", data_dir, "--status", "incomplete"
    )
    assert [r["id"] for r in listed] == [failed["id"]]

    # No unfinished blob is left behind under its temporary name.
    assert not list(data_dir.glob("blobs/**/*.part"))

    full_out, part_out = tmp_path / "full.wav", tmp_path / "part.wav"
    code, _, err = export_rec(capsys, data_dir, earlier["id"], full_out)
    assert code == 0, err
    code, _, err = export_rec(capsys, data_dir, failed["id"], part_out)
    assert code == 0, err
    full, full_info = read_wav(full_out)
    part, part_info = read_wav(part_out)
    assert abs(full_info.frames / OUT_RATE - 10.0) <= 0.020
    assert part_info.channels == 2
    assert part_info.samplerate == OUT_RATE
    assert 0 < part.shape[0] < full.shape[0]
    np.testing.assert_array_equal(part, full[: part.shape[0]])


def test_full_disk_incomplete_row_duration_matches_kept_audio(
    key_env: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog's duration of an incomplete recording describes the audio actually kept."""
    wav = make_wav(tmp_path / "long.wav", seconds=10.0)
    code, out, _, _ = _import_with_full_disk(40_000, data_dir, wav, capsys, monkeypatch)
    assert code == 1
    row = json.loads(out)
    assert row["status"] == "incomplete"

    code, stdout, err = export_rec(capsys, data_dir, row["id"], tmp_path / "p.wav", "--json")
    assert code == 0, err
    exported_ms = json.loads(stdout)["duration_ms"]
    assert exported_ms < 10_000
    assert abs(row["duration_ms"] - exported_ms) <= 20, (row["duration_ms"], exported_ms)


def test_full_disk_before_first_chunk_marks_failed(
    key_env: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wav = make_wav(tmp_path / "long.wav", seconds=10.0)
    earlier = import_rec(capsys, data_dir, wav)

    code, out, err, _ = _import_with_full_disk(0, data_dir, wav, capsys, monkeypatch)
    assert code == 1
    line = error_line(err)
    assert "disk full" in line or "No space left" in line, line
    row = json.loads(out)
    assert row["status"] == "failed"
    assert row["chunk_count"] == 0
    assert row["id"] in line

    code, _, err = export_rec(capsys, data_dir, row["id"], tmp_path / "f.wav")
    assert code == 1
    assert row["id"] in error_line(err)
    assert not (tmp_path / "f.wav").exists()
    # A failed recording leaves no blob behind; the earlier one is untouched.
    assert not list(data_dir.glob(f"blobs/**/{row['id']}*"))
    code, _, err = export_rec(capsys, data_dir, earlier["id"], tmp_path / "e.wav")
    assert code == 0, err


# -- tampering --------------------------------------------------------------------------------
def test_tampered_blob_is_refused_on_export(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "call.wav", seconds=3.0)
    row = import_rec(capsys, data_dir, wav)
    other = import_rec(capsys, data_dir, wav)
    blobs = [p for p in data_dir.glob("blobs/**/*.rec") if p.name == f"{row['id']}.rec"]
    assert len(blobs) == 1
    data = bytearray(blobs[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    blobs[0].write_bytes(bytes(data))

    out_wav = tmp_path / "tampered.wav"
    code, out, err = export_rec(capsys, data_dir, row["id"], out_wav)
    assert code == 1
    assert out == ""
    line = error_line(err)
    assert row["id"] in line
    assert "chunk" in line
    assert not out_wav.exists()
    assert [p.name for p in tmp_path.iterdir() if "tampered" in p.name] == []
    with Vault(Path(data_dir), create=False) as vault:
        assert not [e for e in vault.catalog.audit_events() if e.action == "recording.exported"]

    # The other recording is unaffected.
    code, _, err = export_rec(capsys, data_dir, other["id"], tmp_path / "other.wav")
    assert code == 0, err


# -- usage ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (("recordings", "import"), ("--tenant", "--lawful-basis", "--purpose", "--json")),
        (("recordings", "list"), ("--tenant", "--status", "--json")),
        (("recordings", "show"), ("id", "--json")),
        (("recordings", "export"), ("--output", "--reason", "--json")),
        (("keys", "list"), ("--tenant", "--json")),
        (("keys", "rotate"), ("--tenant", "--json")),
        (("serve",), ("--host", "--port")),
    ],
)
def test_help_of_each_command(
    argv: tuple[str, ...], mentions: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ivr " + " ".join(argv))
    for option in (*mentions, "--data-dir"):
        assert option in out, option


@pytest.mark.parametrize(
    "argv", [(), ("recordings",), ("keys",), ("frobnicate",)], ids=lambda a: " ".join(a) or "none"
)
def test_missing_or_unknown_command_is_usage_error(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    assert "usage: ivr" in capsys.readouterr().err


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("recordings", "keys", "serve", "Exit codes"):
        assert word in out


def test_list_limit(
    key_env: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = make_wav(tmp_path / "a.wav", seconds=0.3)
    ids = [import_rec(capsys, data_dir, wav)["id"] for _ in range(3)]
    listed = run_json(capsys, "recordings", "list", "--data-dir", data_dir, "--limit", "2")
    assert [r["id"] for r in listed] == ids[:2]
    with pytest.raises(SystemExit) as exc:
        main(["recordings", "list", "--data-dir", str(data_dir), "--limit", "0"])
    assert exc.value.code == 2


def test_commands_without_config_read_ivr_config_and_a_database_error_is_one_line(
    capsys, tmp_path, monkeypatch
):
    """A node's vault commands reach the catalog and key store its configuration names
    (IVR_CONFIG, as the service reads it), and a PostgreSQL that cannot be reached is an
    operator's one-line error, not a traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    url = f"postgresql://ivr@127.0.0.1:{port}"
    data = tmp_path / "var"
    Vault(data, environ={}, fsync=False).close()  # a keyring (and master.key) of its own
    config = tmp_path / "node.toml"
    monkeypatch.setenv("IVR_CONFIG", str(config))
    config.write_text(f'[storage]\ncatalog_url = "{url}/ivr"\n')
    code, out, err = run(capsys, "recordings", "list", "--data-dir", data)
    assert (code, out) == (1, "")
    assert err.startswith(f"ivr: error: catalog {url}/ivr cannot be opened: ") and "refused" in err
    assert len(err.splitlines()) == 1
    (data / "keyring.json").unlink()
    config.write_text(f'[storage]\ncatalog_url = "{url}/ivr"\nkeyring_url = "{url}/keys"\n')
    code, out, err = run(capsys, "recordings", "list", "--data-dir", data)
    assert (code, out) == (1, "")
    assert err.startswith(f"ivr: error: key store {url}/keys: could not") and "refused" in err
    assert len(err.splitlines()) == 1
