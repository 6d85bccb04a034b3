"""tests/test_custody.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_custody import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")

# Tests of the SQLite file itself, not of the catalog:
# not collected here; why, and the test of the same on S3.
SQLITE_ONLY = {
    "test_rotate_with_rewrap_moves_every_local_key_to_the_newest_version": (
        "copies the data directory, SQLite catalog included, as a backup"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]

# Tests of the local blob files (a full or torn disk):
# not collected here; why, and the test of the same on S3.
LOCAL_FILES_ONLY = {
    "test_recovery_without_the_key_keeps_whole_chunks": (
        "tears the local .rec.part file; "
        "on S3: test_pgs3_bucket.py::test_recovery_without_the_key_keeps_whole_segments"
    ),
    "test_a_full_disk_is_measured_with_the_key_still_in_memory": (
        "fills the local disk through os.write"
    ),
}
for _name in LOCAL_FILES_ONLY:
    del globals()[_name]
