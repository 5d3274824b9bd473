"""The store in one SQLite file: the default, for auth replicas on one machine.

WAL lets reads run beside the one writer; synchronous=FULL syncs the WAL at every commit, so a
settled call survives a power cut, not only a crash of the process. Every write begins
IMMEDIATE, taking the database's write lock before it reads anything: two reserves, from any
number of processes, cannot both read the same budget and both be admitted."""
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Self

from meshllm.sqlite_wal import switch_to_wal
from services.auth.sql_store import SqlStore
from services.auth.store import utc_now

# How long a write waits for another process's write lock before it fails as unavailable.
_LOCK_WAIT_SECONDS = 10.0


class SqliteStore(SqlStore):
    _NAME = "SQLite"
    _BEGIN_WRITE = "BEGIN IMMEDIATE"
    _BYTES = "BLOB"
    _TIME = "TEXT"  # ISO 8601 in UTC, all one width: text order is time order
    _UNAVAILABLE_ERRORS = (sqlite3.OperationalError,)

    def __init__(self, path: str, *, clock: Callable[[], datetime] = utc_now):
        # One thread, so one connection: SQLite takes one writer at a time anyway, and this
        # process's writes then queue here rather than in SQLite's sleeping busy-wait.
        super().__init__(workers=1, clock=clock)
        self._path = path

    @classmethod
    async def open(cls, path: str, *, clock: Callable[[], datetime] = utc_now) -> Self:
        return await cls(path, clock=clock)._started()

    def _connect(self) -> sqlite3.Connection:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are the store's own BEGIN/COMMIT.
        # check_same_thread=False only so close() can close it from another thread.
        db = sqlite3.connect(self._path, timeout=_LOCK_WAIT_SECONDS, isolation_level=None,
                             check_same_thread=False)
        switch_to_wal(db, _LOCK_WAIT_SECONDS)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _to_db_time(self, at: datetime) -> str:
        return at.isoformat(timespec="microseconds")

    def _from_db_time(self, value: str) -> datetime:
        return datetime.fromisoformat(value)
