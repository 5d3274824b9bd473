"""The auth store on both databases: SQLite in the test's tmp_path, PostgreSQL started once per
session with a fresh database for every test."""
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from services.auth.store import open_store
from tests.integration.auth.auth_server import running_auth
from tests.postgres_server import running_postgres

_database_numbers = itertools.count()


class MovableClock:
    """The stores' clock, which decides when reservations expire; a test moves it."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def postgres():
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'auth.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(datetime(2026, 5, 10, 12, 0, tzinfo=UTC))


@pytest.fixture
async def store(database_url, clock):
    store = await open_store(database_url, clock=clock)
    yield store
    await store.close()


@pytest.fixture
async def other_store(database_url, clock):
    """A second store on the same database, as a second auth replica opens it."""
    store = await open_store(database_url, clock=clock)
    yield store
    await store.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'auth.db'}"


@pytest.fixture
async def auth(sqlite_url):
    async with running_auth(sqlite_url) as replica:
        yield replica
