"""The command line on recordings kept in an object store, without the configuration: the
catalog's blob_path names the store, the environment gives the endpoint and keys."""

from __future__ import annotations

import base64
import json
import os

from ivr.cli import main
from storage import lifecycle
from storage.vault import Vault

MASTER = os.urandom(32)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_hold_and_delete_reach_the_object_store(tmp_path, weed, s3_env, monkeypatch, capsys):
    name = "l-" + os.urandom(8).hex()
    client = weed.client()
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    data = tmp_path / "var"
    with Vault(data, master_key=MASTER, fsync=False, blob_url=f"s3://{name}/rec") as vault:
        rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
        for i in range(350):
            rec.append(0, i * 20, bytes([i % 256]) * 160)
        row = rec.close()
        keys = [s.key for s in vault.segments(row.id)]
    assert row.blob_path.startswith(f"s3://{name}/rec/") and len(keys) == 2

    out = tmp_path / "out.wav"
    code, _, err = run(capsys, "recordings", "export", row.id, "-o", out, "--data-dir", data)
    assert code == 0, err
    assert out.stat().st_size > 7 * 8000 * 2  # 7 s of 16-bit audio, and a header

    code, _, err = run(
        capsys, "recordings", "hold", row.id, "--reason", "dispute", "--data-dir", data
    )
    assert code == 0, err
    for key in keys:
        hold = client.get_object_legal_hold(Bucket=name, Key=key)["LegalHold"]["Status"]
        assert hold == "ON"
    code, _, err = run(capsys, "recordings", "delete", row.id, "--reason", "x", "--data-dir", data)
    assert code == 1 and "legal hold" in err

    code, _, err = run(
        capsys, "recordings", "release", row.id, "--reason", "settled", "--data-dir", data
    )
    assert code == 0, err
    code, out_text, err = run(
        capsys, "recordings", "delete", row.id, "--reason", "asked", "--data-dir", data, "--json"
    )
    assert code == 0, err
    assert json.loads(out_text)["status"] == "erased"
    listed = client.list_object_versions(Bucket=name)
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        assert lifecycle.remove_orphan_blobs(vault) == 0
