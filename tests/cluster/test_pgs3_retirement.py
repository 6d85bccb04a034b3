"""tests/test_retirement.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_retirement import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")

# Tests of the SQLite file itself, not of the catalog: not collected here, for the reasons
# test_pg_retirement.py gives.
from tests.cluster.test_pg_retirement import SQLITE_ONLY  # noqa: E402

for _name in SQLITE_ONLY:
    del globals()[_name]
