"""tests/test_lifecycle.py's tests, the catalog on PostgreSQL (tests/cluster/conftest.py)."""

import pytest

from tests.test_lifecycle import *  # noqa: F403 - the same test bodies, collected here again

pytestmark = pytest.mark.usefixtures("catalogs_on_postgres")
