"""tests/test_lifecycle.py's tests, the catalog on PostgreSQL and the blobs on S3
(tests/cluster/conftest.py)."""

import pytest

from tests.test_lifecycle import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("vaults_on_postgres_and_s3")
