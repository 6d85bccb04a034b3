"""tests/test_breach.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_breach import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")

# Tests of the SQLite file itself, not of the catalog:
# not collected here; why, and the test of the same on S3.
SQLITE_ONLY = {
    "test_measures_survive_an_old_catalog_being_migrated": (
        "downgrades a SQLite file with PRAGMA user_version"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]
