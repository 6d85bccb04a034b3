"""tests/test_vault.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_vault import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")

# Tests of the SQLite file itself, not of the catalog:
# not collected here; why, and the test of the same on S3.
SQLITE_ONLY = {
    "test_key_row_is_committed_before_the_blob_exists": (
        "reads the row through a second sqlite3 connection to the file"
    ),
    "test_sigkilled_writer_leaves_audio_up_to_a_second_before_the_kill": (
        "its child process opens the vault without the routing of conftest.py; "
        "on S3: test_s3_store.py::test_a_killed_writer_keeps_every_uploaded_segment"
    ),
    "test_data_files_are_private": (
        "the modes of the SQLite file and its WAL and of local blob files"
    ),
    "test_catalog_rejects_unknown_lawful_basis": (
        "expects sqlite3.IntegrityError (test_pg_catalog.py checks the constraint)"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]

# Tests of the local blob files (a full or torn disk):
# not collected here; why, and the test of the same on S3.
LOCAL_FILES_ONLY = {
    "test_full_disk_keeps_what_was_sealed": (
        "fills the local disk through os.write; "
        "on S3: test_s3_store.py::test_a_store_that_refuses_a_segment_ends_the_recording_incomplete"
    ),
    "test_a_disk_that_fills_before_the_first_chunk_fails_cleanly": (
        "fills the local disk through os.write; "
        "on S3: test_pgs3_bucket.py::"
        "test_a_store_that_refuses_the_first_segment_fails_the_recording_cleanly"
    ),
    "test_recovery_keeps_sealed_chunks_and_cuts_a_torn_one": (
        "tears the local .rec.part file; "
        "on S3 a recording left open: test_blob_stores.py::"
        "test_a_recording_left_open_is_recovered_at_the_next_start"
    ),
}
for _name in LOCAL_FILES_ONLY:
    del globals()[_name]
