"""tests/test_custody.py's tests, the catalog on PostgreSQL (tests/cluster/conftest.py)."""

import pytest

from tests.test_custody import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("catalogs_on_postgres")

# Tests of the SQLite file itself, not of the catalog: not collected here.
SQLITE_ONLY = {
    "test_rotate_with_rewrap_moves_every_local_key_to_the_newest_version": (
        "copies the data directory, SQLite catalog included, as a backup"
    ),
}
for _name in SQLITE_ONLY:
    del globals()[_name]
