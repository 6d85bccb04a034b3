"""tests/test_vault.py's tests, the catalog on PostgreSQL (tests/cluster/conftest.py)."""

import pytest

from tests.test_vault import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("catalogs_on_postgres")

# Tests of the SQLite file itself, not of the catalog: not collected here.
SQLITE_ONLY = {
    "test_key_row_is_committed_before_the_blob_exists": (
        "reads the row through a second sqlite3 connection to the file"
    ),
    "test_sigkilled_writer_leaves_audio_up_to_a_second_before_the_kill": (
        "its child process opens the vault without the routing of conftest.py"
    ),
    "test_data_files_are_private": "the modes of the SQLite file and its WAL",
    "test_catalog_rejects_unknown_lawful_basis": (
        "expects sqlite3.IntegrityError (test_pg_catalog.py checks the constraint)"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]
