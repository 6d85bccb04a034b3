"""How long ``ivr vault migrate`` takes, on a real PostgreSQL and SeaweedFS on loopback.

A single-node vault of ``--recordings`` recordings of ``--seconds`` of two-track G.711 each (one
call each, with a caller) is migrated into an empty PostgreSQL catalog, an S3 bucket and a key
store; then the migration is run again, which finds it complete and only verifies every
recording from the target (decrypted from the target and from the source, and compared).

PostgreSQL and SeaweedFS are started as the cluster tests start them (tests/cluster/), so run
from the repository root after ``make test-cluster`` has installed them::

    .venv/bin/python bench/migrate.py                    # 200 recordings x 30 s
    .venv/bin/python bench/migrate.py --recordings 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ivr.cli import main as ivr  # noqa: E402
from ivr.cluster_demo import seaweedfs  # noqa: E402
from ivr.cluster_demo.postgres import PostgresServer  # noqa: E402
from storage.vault import Vault  # noqa: E402

MASTER = bytes(range(32))


def make_vault(data: Path, recordings: int, seconds: int) -> int:
    """The source vault; its blobs' total size in bytes."""
    payload = os.urandom(160)
    with Vault(data, master_key=MASTER, fsync=False) as vault:
        for n in range(recordings):
            call = vault.open_call(tenant="bench", platform="twilio", caller=f"+4670{n:07d}")
            rec = vault.start_recording(
                tenant="bench", lawful_basis="consent", purpose="bench", call_id=call
            )
            for i in range(seconds * 50):
                rec.append(0, i * 20, payload)
                rec.append(1, i * 20, payload)
            rec.close()
        return sum(r.blob_size or 0 for r in vault.list())


def migrate(argv: list[str]) -> tuple[float, dict[str, Any]]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = ivr(argv)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"ivr vault migrate failed ({code}): {out.getvalue()}")
    return elapsed, json.loads(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    os.environ["IVR_MASTER_KEY"] = base64.b64encode(MASTER).decode()
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        work = Path(tmp)
        postgres = PostgresServer()
        server = seaweedfs.start(work / "weed")
        try:
            os.environ.update(server.environ)
            client = server.client()
            client.create_bucket(Bucket="bench")
            # The bucket's first write allocates its volumes (about a second): not the copy's.
            client.put_object(Bucket="bench", Key="warm-up", Body=b"warm-up")
            data = work / "var"
            size = make_vault(data, args.recordings, args.seconds)
            argv = ["vault", "migrate", "--data-dir", str(data), "--quiet", "--json"]
            argv += ["--to-catalog", postgres.database(), "--to-blobs", "s3://bench/rec"]
            argv += ["--to-keyring", postgres.database("k")]
            first, summary = migrate(argv)
            mb = size / 1e6
            print(
                f"migrate {args.recordings} recordings x {args.seconds} s ({mb:.1f} MB, "
                f"{summary['segments_sent']} segments, {summary['calls']} calls, "
                f"{summary['audit_entries']} audit entries): {first:.1f} s, "
                f"{args.recordings / first:.1f} recordings/s, {mb / first:.1f} MB/s",
                flush=True,
            )
            again, summary = migrate(argv)
            assert summary["state"] == "complete" and summary["verified"] == args.recordings
            print(
                f"run again (complete: verify only) {args.recordings} recordings: {again:.1f} s",
                flush=True,
            )
        finally:
            seaweedfs.stop(server)
            postgres.stop()


if __name__ == "__main__":
    main()
