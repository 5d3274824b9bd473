"""The store in PostgreSQL: for auth replicas on more than one machine.

A transaction runs at READ COMMITTED, where two reserves could each read the same spent and
reserved sums and both be admitted; so every reserve and settle first locks its tenant's row
(SELECT ... FOR UPDATE), and a tenant's budget changes one transaction at a time while other
tenants' run beside it."""
from collections.abc import Callable
from datetime import datetime
from typing import Self

import psycopg

from services.auth.sql_store import SqlStore
from services.auth.store import utc_now

_CONNECT_TIMEOUT_SECONDS = 5
# Replicas starting together would race CREATE TABLE IF NOT EXISTS (it is not atomic in
# PostgreSQL); this lock, held until the schema transaction ends, makes them take turns.
_SCHEMA_LOCK_ID = 0x6D6573686C6C6D  # "meshllm"


class PostgresStore(SqlStore):
    _NAME = "PostgreSQL"
    _BEGIN_WRITE = "BEGIN"
    _LOCK_ROW = " FOR UPDATE"
    _SCHEMA_LOCK = f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})"
    _BYTES = "BYTEA"
    _TIME = "TIMESTAMPTZ"
    _UNAVAILABLE_ERRORS = (psycopg.OperationalError,)

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utc_now,
                 connections: int = 8):
        super().__init__(workers=connections, clock=clock)
        self._url = url

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> Self:
        return await cls(url, clock=clock)._started()

    def _connect(self) -> psycopg.Connection:
        # autocommit: transactions are the store's own BEGIN/COMMIT, reads one statement each.
        return psycopg.connect(self._url, autocommit=True,
                               connect_timeout=_CONNECT_TIMEOUT_SECONDS)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")
