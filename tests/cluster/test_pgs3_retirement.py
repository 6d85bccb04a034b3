"""tests/test_retirement.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_retirement import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")

# Tests of the SQLite file itself, not of the catalog:
# not collected here; why, and the test of the same on S3.
SQLITE_ONLY = {
    "test_an_erased_recording_in_a_backup_stops_decrypting_when_its_key_version_is_retired": (
        "a backup is a copy of the SQLite file (PostgreSQL: docs/postgresql.md)"
    ),
    "test_with_the_schedule_a_backup_stops_opening_an_erasure_within_the_documented_bound": (
        "a backup is a copy of the SQLite file"
    ),
    "test_subject_erasure_removes_the_platform_call_id": (
        "searches the data directory's files (the SQLite catalog) for the call id"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]
