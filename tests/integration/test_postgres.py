"""The store's behaviour, test for test, on a real PostgreSQL server."""

import pytest

from nicheloop.store import Store
from tests.conftest import postgres_database
from tests.unit.nicheloop.test_store import *  # noqa: F403 - the same tests, this module's `store` fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Store:
    return Store(postgres_database(f"store_{request.node.name[:40].lower().replace('[', '_').rstrip(']')}"))
