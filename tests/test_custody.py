"""Public-key key custody: recordings the service can write but never read back.

A tenant configured with ``key_custody = "public_key"`` has every data key and caller number
sealed to its X25519 public key; only the controller's private key opens them. Also key rotation
with re-wrapping, for local and public-key tenants (docs/key-custody.md).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import storage.blobs
from ivr.cli import main
from ivr.config import ConfigError, load_config
from storage.catalog import RecordingStatus
from storage.custody import (
    BadKeyFile,
    PrivateKeyNeeded,
    WrongPrivateKey,
    generate_keypair,
    key_ref_of,
    load_private_key,
    parse_public_key,
    private_pem,
    public_pem,
    raw_public,
)
from storage.keys import KeyringCorrupt, fingerprint
from storage.vault import Vault
from tests.independent_decrypter import decrypt as independent_decrypt
from tests.stored_blobs import blob_bytes, objects

MASTER = os.urandom(32)
EVIDENCE = "consent given to the agent at 10:02, ticket 4711"
MASTER_B64 = base64.b64encode(MASTER).decode()
RATE = 8000


def pattern(i: int, track: int) -> bytes:
    return bytes((i * 7 + track * 101 + k) % 256 for k in range(160))


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def frames_of(vault: Vault, rid: str, private_key: Any = None) -> list[tuple[int, int, bytes]]:
    with vault.open_reader(rid, private_key=private_key) as reader:
        return [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]


def record(vault: Vault, tenant: str = "acme", *, frames: int = 150, caller: str | None = None):
    call = vault.open_call(tenant=tenant, platform="test", caller=caller)
    rec = vault.start_recording(
        tenant=tenant, call_id=call, lawful_basis="consent", purpose="quality"
    )
    sent = [(t, i * 20, pattern(i, t)) for i in range(frames) for t in (0, 1)]
    for f in sent:
        rec.append(*f)
    return call, rec.close(), sent


def spec_unwrap(private: X25519PrivateKey, tenant: str, rid: str, key_ref: str, wrapped: bytes):
    """The data key, unwrapped from docs/key-custody.md alone (no storage/ code)."""
    eph_pub, nonce, body = wrapped[:32], wrapped[32:44], wrapped[44:]
    tenant_pub = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    k = HKDF(hashes.SHA256(), 32, salt=eph_pub + tenant_pub, info=b"ivr dek x25519 v1").derive(
        shared
    )
    ad = b"ivr dek v1\x00" + tenant.encode() + b"\x00" + rid.encode() + b"\x00" + key_ref.encode()
    return AESGCM(k).decrypt(nonce, body, ad)


@pytest.fixture
def keypair() -> tuple[X25519PrivateKey, bytes]:
    return generate_keypair()


@pytest.fixture
def sealed_vault(tmp_path, keypair):
    v = Vault(tmp_path / "data", master_key=MASTER, fsync=False, public_keys={"acme": keypair[1]})
    yield v
    v.close()


# -- recording and reading --------------------------------------------------------------------
def test_public_key_recording_opens_only_with_its_private_key(sealed_vault, keypair):
    private, public = keypair
    _, row, sent = record(sealed_vault)
    assert row.status is RecordingStatus.COMPLETE and row.chunk_count == 3
    fp = fingerprint(public)
    assert row.key_ref == f"x25519/{fp}" and len(fp) == 16
    assert len(row.wrapped_dek) == 32 + 12 + 32 + 16

    with pytest.raises(PrivateKeyNeeded) as info:
        frames_of(sealed_vault, row.id)
    assert str(info.value) == (
        f"recording {row.id} is sealed to the tenant's public key x25519/{fp}; give --private-key"
    )
    other, _ = generate_keypair()
    with pytest.raises(WrongPrivateKey) as wrong:
        frames_of(sealed_vault, row.id, other)
    assert f"does not match key x25519/{fp} of recording {row.id}" in str(wrong.value)

    assert frames_of(sealed_vault, row.id, private) == sent
    assert frames_of(sealed_vault, row.id, raw_private(private)) == sent  # raw bytes work too
    # The wire format as documented: an independent unwrap + decrypt gets the same audio.
    dek = spec_unwrap(private, "acme", row.id, row.key_ref, row.wrapped_dek)
    assert dek == sealed_vault.data_key(row, private)
    blob = blob_bytes(sealed_vault, row)
    assert independent_decrypt(blob, dek)[1] == sent


def test_the_wrapped_key_is_bound_to_its_recording(sealed_vault, keypair):
    private, _ = keypair
    _, a, _ = record(sealed_vault, frames=10)
    _, b, _ = record(sealed_vault, frames=10)
    swapped = type(a).from_row  # rows are frozen: rebuild b's with a's wrapped key
    (row,) = sealed_vault.catalog.query("SELECT * FROM recordings WHERE id = ?", (b.id,))
    raw = dict(zip(row.keys(), row, strict=True))
    raw["wrapped_dek"] = a.wrapped_dek
    forged = swapped(raw)
    with pytest.raises(KeyringCorrupt, match=f"sealed key of recording {b.id} does not open"):
        sealed_vault.data_key(forged, private)


def test_local_tenants_are_unchanged_next_to_a_public_key_tenant(sealed_vault):
    _, row, sent = record(sealed_vault, tenant="beta", caller="+46701234567")
    assert row.key_ref == "local/1"
    assert frames_of(sealed_vault, row.id) == sent
    assert sealed_vault.caller_of(row.call_id) == "+46701234567"


def test_caller_numbers_are_sealed_to_the_public_key(sealed_vault, keypair):
    private, public = keypair
    call, _, _ = record(sealed_vault, frames=5, caller="+46701234567")
    row = sealed_vault.catalog.call(call)
    assert row["caller_key_ref"] == key_ref_of(public)
    with pytest.raises(PrivateKeyNeeded, match="give --private-key"):
        sealed_vault.caller_of(call)
    with pytest.raises(WrongPrivateKey):
        sealed_vault.caller_of(call, generate_keypair()[0])
    assert sealed_vault.caller_of(call, private) == "+46701234567"
    # Finding a caller's calls still works: the lookup hash uses the local lookup key.
    found = sealed_vault.catalog.calls_by_caller(
        "acme", sealed_vault.caller_hash("acme", "+46701234567")
    )
    assert [c["id"] for c in found] == [call]


def test_the_data_directory_holds_nothing_that_decrypts(tmp_path, keypair):
    private, public = keypair
    data = tmp_path / "data"
    with Vault(data, master_key=MASTER, fsync=False, public_keys={"acme": public}) as vault:
        call, row, _ = record(vault, caller="+46701234567")
        dek = vault.data_key(row, private)
        kept = {key: key.encode() + data for key, (data, _) in objects(vault).items()}
    secrets = {
        "private key": raw_private(private),
        "private key (base64)": base64.b64encode(raw_private(private)),
        "private key (PEM)": private_pem(private).split(b"\n")[1],
        "data key": dek,
        "data key (base64)": base64.b64encode(dek),
        "caller number": b"+46701234567",
    }
    # Every file of the data directory and every object of its object store (if any).
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "keyring.json" for p in files)
    assert any(p.suffix == ".rec" for p in files) or kept
    kept.update((str(p), p.read_bytes()) for p in files)
    for where, content in kept.items():
        for what, value in secrets.items():
            assert value not in content, f"{what} found in {where}"
    # And with everything the data directory holds (master key included), it does not open.
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        with pytest.raises(PrivateKeyNeeded):
            vault.data_key(vault.get(row.id))
        with pytest.raises(PrivateKeyNeeded):
            vault.caller_of(call)


def test_the_data_directory_remembers_custody_for_processes_without_config(tmp_path, keypair):
    public = keypair[1]
    data = tmp_path / "data"
    Vault(data, master_key=MASTER, fsync=False, public_keys={"acme": public}).close()
    # A tool started without the configuration must not fall back to service-readable keys.
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        _, row, _ = record(vault, frames=5)
        assert row.key_ref == key_ref_of(public)
    # A configuration that names the tenant as local switches it back, audited.
    with Vault(data, master_key=MASTER, fsync=False, public_keys={"acme": None}) as vault:
        _, row, _ = record(vault, frames=5)
        assert row.key_ref == "local/1"
        changes = [e for e in vault.catalog.audit_events() if e.action == "key.custody_changed"]
    assert [(e.detail["from"], e.detail["to"]) for e in changes] == [
        ("local", key_ref_of(public)),
        (key_ref_of(public), "local"),
    ]


def test_a_swapped_public_key_in_the_keyring_is_detected(tmp_path, keypair):
    data = tmp_path / "data"
    Vault(data, master_key=MASTER, fsync=False, public_keys={"acme": keypair[1]}).close()
    doc = json.loads((data / "keyring.json").read_text())
    attacker = generate_keypair()[1]
    doc["custody"]["acme"]["sealed"] = base64.b64encode(os.urandom(12 + 32 + 16)).decode()
    doc["custody"]["acme"]["key_ref"] = key_ref_of(attacker)
    (data / "keyring.json").write_text(json.dumps(doc))
    with pytest.raises(KeyringCorrupt, match="public key of tenant 'acme' is damaged or was"):
        Vault(data, master_key=MASTER, fsync=False)


# -- crash recovery -----------------------------------------------------------------------------
def abandon(v: Vault) -> None:
    """Make ``v`` look like a process that died: its writer lock released, nothing finalised."""
    os.close(v._writer_lock)


def test_recovery_without_the_key_keeps_whole_chunks(tmp_path, keypair, capsys, monkeypatch):
    private, public = keypair
    a = Vault(tmp_path, master_key=MASTER, fsync=False, public_keys={"acme": public})
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    for i in range(230):  # 4.6 s: chunks 0-3 sealed, 0.6 s still in the buffer
        rec.append(0, i * 20, pattern(i, 0))
    rec.wait_written()
    part = next((tmp_path / "blobs").rglob("*.rec.part"))
    with part.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00torn chunk")  # a write cut short by the crash
    abandon(a)

    b = Vault(tmp_path, master_key=MASTER, fsync=False)  # no key to verify with
    row = b.get(rec.id)
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count == 4
    assert row.duration_ms is None and "unverified" in row.status_reason
    assert row.ended_at is not None
    event = next(e for e in b.catalog.audit_events() if e.action == "recording.recovered")
    assert event.detail["chunks"] == 4 and event.detail["verified"] is False
    assert b.recover() == []
    # The controller's reader verifies the kept chunks against the recorded count.
    assert frames_of(b, rec.id, private) == [(0, i * 20, pattern(i, 0)) for i in range(200)]
    b.close()

    monkeypatch.setenv("IVR_MASTER_KEY", MASTER_B64)
    key_file = tmp_path / "controller" / "private.pem"
    key_file.parent.mkdir()
    key_file.write_bytes(private_pem(private))
    out = tmp_path / "out.wav"
    export = ["recordings", "export", rec.id, "-o", str(out), "--data-dir", str(tmp_path)]
    code = main([*export, "--private-key", str(key_file)])
    assert code == 0, capsys.readouterr().err
    samples, rate = sf.read(out, dtype="int16")
    assert rate == RATE and len(samples) == 200 * 160


def test_recovery_of_a_public_key_recording_with_no_chunks_fails_it(tmp_path, keypair):
    a = Vault(tmp_path, master_key=MASTER, fsync=False, public_keys={"acme": keypair[1]})
    rec = a.start_recording(tenant="acme", lawful_basis="contract", purpose="orders")
    rec.append(0, 0, pattern(0, 0))  # still in the buffer: nothing on disk
    abandon(a)
    with Vault(tmp_path, master_key=MASTER, fsync=False) as b:
        row = b.get(rec.id)
        assert row.status is RecordingStatus.FAILED and row.wrapped_dek is None


class FullDisk:
    """Stands in for ``os`` inside ``storage.blobs``: blob writes fail after ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.written = limit, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        room = self.limit - self.written
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, memoryview(data)[:room])
        self.written += n
        return n


def test_a_full_disk_is_measured_with_the_key_still_in_memory(sealed_vault, keypair, monkeypatch):
    """The writer still holds the data key when the disk fills, so what reached the disk is
    verified and measured then, even though the service can never unwrap the key again."""
    private, _ = keypair
    monkeypatch.setattr(storage.blobs, "os", FullDisk(20_000))
    rec = sealed_vault.start_recording(tenant="acme", lawful_basis="consent", purpose="q")
    for i in range(500):
        try:
            rec.append(0, i * 20, pattern(i, 0))
        except OSError:
            break
    row = rec.close()
    monkeypatch.undo()
    assert row.status is RecordingStatus.INCOMPLETE and row.chunk_count >= 1
    kept = frames_of(sealed_vault, row.id, private)
    assert row.duration_ms == kept[-1][1] + 20
    assert rec._dek is None  # not kept past the recording


# -- the command line -----------------------------------------------------------------------------
@pytest.fixture
def cli_env(monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", MASTER_B64)
    monkeypatch.delenv("IVR_DATA_DIR", raising=False)
    monkeypatch.delenv("IVR_CONFIG", raising=False)


def run(capsys, *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: Any) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ivr: error: "), err
    return lines[0]


def write_config(path: Path, public_key: str | None, tenant: str = "acme") -> Path:
    custody = f'key_custody = "public_key"\npublic_key = "{public_key}"\n' if public_key else ""
    path.write_text(
        f'[tenants.{tenant}]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n{custody}'
    )
    return path


def make_wav(path: Path, seconds: float = 1.0) -> Path:
    t = np.arange(round(seconds * 44100)) / 44100
    cols = [0.5 * np.sin(2 * np.pi * f * t) for f in (440.0, 660.0)]
    sf.write(path, np.stack(cols, axis=1).astype(np.float32), 44100, subtype="PCM_16")
    return path


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * RATE / samples.size)


def import_rec(capsys, data: Path, wav: Path, *extra: Any) -> dict[str, Any]:
    return run_json(
        capsys,
        *("recordings", "import", wav, "--data-dir", data, "--tenant", "acme"),
        *("--lawful-basis", "consent", "--evidence", EVIDENCE, "--purpose", "quality", *extra),
    )


def generate(capsys, out: Path) -> dict[str, Any]:
    return run_json(capsys, "keys", "generate", "--out", out)


def test_cli_generate_import_and_export_with_the_private_key(cli_env, tmp_path, capsys):
    keys = generate(capsys, tmp_path / "controller")
    private_file = Path(keys["private_key_file"])
    assert private_file.name == "private.pem"
    assert stat.S_IMODE(private_file.stat().st_mode) == 0o600
    public = base64.b64decode(keys["public_key"])
    assert keys["key_ref"] == key_ref_of(public)
    assert raw_public(load_private_key(private_file)) == public
    # Running it again would overwrite the key: refused.
    code, _, err = run(capsys, "keys", "generate", "--out", tmp_path / "controller")
    assert code == 1 and "already exists" in error_line(err)

    config = write_config(tmp_path / "ivr.toml", keys["public_key"])
    data = tmp_path / "var"
    wav = make_wav(tmp_path / "call.wav")
    row = import_rec(capsys, data, wav, "--config", config)
    assert row["key_ref"] == keys["key_ref"] and row["status"] == "complete"

    out = tmp_path / "out.wav"
    export = ("recordings", "export", row["id"], "-o", out, "--data-dir", data)
    code, _, err = run(capsys, *export)
    assert code == 1
    assert f"is sealed to the tenant's public key {keys['key_ref']}" in error_line(err)
    assert not out.exists()

    other = generate(capsys, tmp_path / "other")
    code, _, err = run(capsys, *export, "--private-key", other["private_key_file"])
    assert code == 1
    assert f"does not match key {keys['key_ref']} of recording {row['id']}" in error_line(err)
    assert not out.exists()

    for bad, message in [
        (tmp_path / "missing.pem", "does not exist"),
        (tmp_path / "controller" / "public.pem", "holds a public key"),
        (tmp_path / "garbage.pem", "not a private key file"),
    ]:
        if bad.name == "garbage.pem":
            bad.write_text("hello\n")
        code, _, err = run(capsys, *export, "--private-key", bad)
        assert code == 1 and message in error_line(err), err

    code, _, err = run(capsys, *export, "--private-key", private_file)
    assert code == 0, err
    samples, rate = sf.read(out, dtype="int16", always_2d=True)
    assert rate == RATE and samples.shape[1] == 2
    assert abs(dominant_hz(samples[:, 0]) - 440) < 5
    assert abs(dominant_hz(samples[:, 1]) - 660) < 5

    # A base64 raw private key file works as well.
    raw_file = tmp_path / "raw.key"
    raw_file.write_text(base64.b64encode(raw_private(load_private_key(private_file))).decode())
    code, _, err = run(capsys, *export, "--private-key", raw_file)
    assert code == 0, err

    # The next import without --config still seals to the key the data directory knows.
    assert import_rec(capsys, data, wav)["key_ref"] == keys["key_ref"]

    listed = run_json(capsys, "keys", "list", "--data-dir", data)
    assert [(k["custody"], k["key_ref"], k["current"]) for k in listed] == [
        ("public_key", keys["key_ref"], True)
    ]


def test_keys_generate_refuses_the_data_directory(cli_env, tmp_path, capsys):
    data = tmp_path / "var"
    Vault(data, master_key=MASTER, fsync=False).close()
    code, _, err = run(capsys, "keys", "generate", "--out", data / "keys")
    assert code == 1 and "inside the vault" in error_line(err)
    assert not (data / "keys").exists()


def test_rotate_with_rewrap_moves_every_local_key_to_the_newest_version(cli_env, tmp_path, capsys):
    data = tmp_path / "var"
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        first = [record(vault, frames=20, caller=f"+4670123456{i}") for i in range(3)]
        vault.keyring.rotate("acme")
        second = [record(vault, frames=20, caller="+46701234569")]
        discarded = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="q")
        discarded.append(0, 0, pattern(0, 0))
        discarded.discard(reason="consent withdrawn")
        other = record(vault, tenant="beta", frames=20)
    assert {r.key_ref for _, r, _ in first} == {"local/1"}
    assert {r.key_ref for _, r, _ in second} == {"local/2"}

    without = run_json(capsys, "keys", "rotate", "--tenant", "acme", "--data-dir", data)
    assert without["version"] == 3 and "rewrapped" not in without
    result = run_json(capsys, "keys", "rotate", "--tenant", "acme", "--rewrap", "--data-dir", data)
    assert result["version"] == 4
    report = result["rewrapped"]
    assert report["target"] == "local/4"
    assert report["recordings"] == 4 and report["callers"] == 4
    assert report["moved_from"] == {"local/1": 3, "local/2": 1}
    assert report["without_key"] == 1 and report["not_opened"] == {}

    # Old KEK versions are no longer needed: drop them from a copy of the keyring.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    doc = json.loads((copy / "keyring.json").read_text())
    acme = doc["tenants"]["acme"]
    acme["keks"] = [k for k in acme["keks"] if k["version"] == 4]
    (copy / "keyring.json").write_text(json.dumps(doc))
    with Vault(copy, master_key=MASTER, fsync=False) as vault:
        assert [k.version for k in vault.keyring.list("acme")] == [4]
        for call, row, sent in [*first, *second]:
            now = vault.get(row.id)
            assert now.key_ref == "local/4"
            assert frames_of(vault, row.id) == sent
            assert vault.caller_of(call) is not None
            assert vault.catalog.call(call)["caller_key_ref"] == "local/4"
        assert vault.get(discarded.id).wrapped_dek is None
        assert vault.get(other[1].id).key_ref == "local/1"  # another tenant: untouched
        events = vault.catalog.audit_events()
    done = [e for e in events if e.action == "key.rewrapped"]
    assert len(done) == 1 and done[0].tenant == "acme" and done[0].target == "local/4"
    assert done[0].detail["recordings"] == 4 and done[0].detail["callers"] == 4
    batches = [e for e in events if e.action == "key.rewrap_batch"]
    assert sum(e.detail["count"] for e in batches) == 8
    assert [e.target for e in events if e.action == "key.rotated"] == ["local/3", "local/4"]


def test_rewrap_moves_a_public_key_tenant_to_its_new_key(cli_env, tmp_path, capsys):
    data = tmp_path / "var"
    old_private, old_public = generate_keypair()
    new = generate(capsys, tmp_path / "new")
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        local = record(vault, frames=20, caller="+46701234567")  # before public-key custody
    with Vault(data, master_key=MASTER, fsync=False, public_keys={"acme": old_public}) as vault:
        sealed = [record(vault, frames=20, caller="+46701234568") for _ in range(2)]
    config = write_config(tmp_path / "ivr.toml", new["public_key"])
    old_file = tmp_path / "old.pem"
    old_file.write_bytes(private_pem(old_private))

    rewrap = ("keys", "rewrap", "--tenant", "acme", "--config", config, "--data-dir", data)
    # Without the old private key only the local key can move; the others are reported.
    code, out, err = run(capsys, *rewrap, "--json")
    assert code == 0 and "could not open" in err
    report = json.loads(out)
    assert report["recordings"] == 1 and report["not_opened"] == {key_ref_of(old_public): 2}

    report = run_json(capsys, *rewrap, "--private-key", old_file)
    assert report["recordings"] == 2 and report["callers"] == 2
    assert report["moved_from"] == {key_ref_of(old_public): 2}
    assert report["already_current"] == 1

    new_private = load_private_key(Path(new["private_key_file"]))
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        for call, row, sent in [local, *sealed]:
            assert vault.get(row.id).key_ref == new["key_ref"]
            assert frames_of(vault, row.id, new_private) == sent
            with pytest.raises(WrongPrivateKey):
                frames_of(vault, row.id, old_private)
            assert vault.caller_of(call, new_private).startswith("+4670123456")
        # The service side can no longer read the recording it once could.
        with pytest.raises(PrivateKeyNeeded):
            frames_of(vault, local[1].id)
        actions = [e.action for e in vault.catalog.audit_events()]
    assert actions.count("key.rewrapped") == 2

    code, _, err = run(capsys, "keys", "rewrap", "--tenant", "nobody", "--config", config)
    assert code == 1 and "no tenant 'nobody'" in error_line(err)
    local_config = write_config(tmp_path / "local.toml", None)
    code, _, err = run(capsys, "keys", "rewrap", "--tenant", "acme", "--config", local_config)
    assert code == 1 and "keys rotate --tenant acme --rewrap" in error_line(err)


async def test_the_service_seals_to_the_configured_public_key(tmp_path, monkeypatch, keypair):
    from aiohttp.test_utils import TestClient, TestServer

    from ivr.service import VAULT, create_app

    monkeypatch.setenv("IVR_MASTER_KEY", MASTER_B64)
    config = load_config(write_config(tmp_path / "ivr.toml", base64.b64encode(keypair[1]).decode()))
    app = create_app(config, tmp_path / "data", fsync=False)
    async with TestClient(TestServer(app)):
        vault = app[VAULT]
        rec = await vault.astart_recording(tenant="acme", lawful_basis="consent", purpose="q")
        rec.append(0, 0, pattern(0, 0))
        row = await rec.aclose()
        assert row.key_ref == key_ref_of(keypair[1])
        with pytest.raises(PrivateKeyNeeded):
            vault.data_key(row)


# -- configuration ----------------------------------------------------------------------------
def tenant_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "ivr.toml"
    path.write_text(
        f'[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n{extra}\n'
    )
    return path


def config_errors(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(tenant_config(tmp_path, extra))
    return str(info.value)


def test_config_accepts_base64_and_pem_public_keys(tmp_path, keypair):
    _, public = keypair
    b64 = base64.b64encode(public).decode()
    config = load_config(
        tenant_config(tmp_path, f'key_custody = "public_key"\npublic_key = "{b64}"')
    )
    tenant = config.tenants["acme"]
    assert tenant.key_custody == "public_key" and tenant.public_key == public

    pem = public_pem(public).decode()
    config = load_config(
        tenant_config(tmp_path, f'key_custody = "public_key"\npublic_key = """\n{pem}"""')
    )
    assert config.tenants["acme"].public_key == public

    config = load_config(tenant_config(tmp_path, ""))
    assert config.tenants["acme"].key_custody == "local"
    assert config.tenants["acme"].public_key is None


def _pem(key: Any, private: bool) -> str:
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        (
            'key_custody = "public_key"\npublic_key = "not base64!"',
            "tenants.acme.public_key",
            "expected base64 of a raw 32-byte X25519 public key",
        ),
        (
            f'key_custody = "public_key"\npublic_key = "{base64.b64encode(bytes(16)).decode()}"',
            "tenants.acme.public_key",
            "expected base64 of a raw 32-byte X25519 public key",
        ),
        (
            f'key_custody = "public_key"\npublic_key = "{base64.b64encode(bytes(32)).decode()}"',
            "tenants.acme.public_key",
            "low-order point",
        ),
        (
            'key_custody = "public_key"\npublic_key = """\n'
            + _pem(X25519PrivateKey.generate(), True)
            + '"""',
            "tenants.acme.public_key",
            "this is a private key",
        ),
        (
            'key_custody = "public_key"\npublic_key = """\n'
            + _pem(Ed25519PrivateKey.generate(), False)
            + '"""',
            "tenants.acme.public_key",
            "key custody needs an X25519 key",
        ),
        (
            'key_custody = "public_key"',
            "tenants.acme.public_key",
            'required with key_custody = "public_key"',
        ),
        (
            f'public_key = "{base64.b64encode(generate_keypair()[1]).decode()}"',
            "tenants.acme.public_key",
            'only used with key_custody = "public_key"',
        ),
        ('key_custody = "public"', "tenants.acme.key_custody", "unknown key custody 'public'"),
        ("key_custody = 1", "tenants.acme.key_custody", "expected a string"),
        ('private_key = "x"', "tenants.acme.private_key", "never put the private key"),
    ],
)
def test_config_rejects_bad_key_custody(tmp_path, extra, where, message):
    errors = config_errors(tmp_path, extra)
    assert f"ivr.toml: {where}: " in errors and message in errors, errors


def test_parse_public_key_and_private_key_files(tmp_path, keypair):
    private, public = keypair
    assert parse_public_key(base64.urlsafe_b64encode(public).decode().rstrip("=")) == public
    path = tmp_path / "k.pem"
    path.write_bytes(private_pem(private))
    assert raw_public(load_private_key(path)) == public
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(BadKeyFile, match="not a private key file"):
        load_private_key(path)
    path.write_text(_pem(Ed25519PrivateKey.generate(), True))
    with pytest.raises(BadKeyFile, match="not an X25519 key"):
        load_private_key(path)
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(BadKeyFile, match="passphrase-protected"):
        load_private_key(path)
