"""tests/test_breach.py's tests, the catalog on PostgreSQL (tests/cluster/conftest.py)."""

import pytest

from tests.test_breach import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("catalogs_on_postgres")

# Tests of the SQLite file itself, not of the catalog: not collected here.
SQLITE_ONLY = {
    "test_measures_survive_an_old_catalog_being_migrated": (
        "downgrades a SQLite file with PRAGMA user_version"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]
