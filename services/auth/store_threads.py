"""Running a blocking database driver under asyncio: a few worker threads of the store's own,
each with its own connection, and a read or a write transaction run on one of them.

Both stores use a blocking driver (sqlite3 has no other API; psycopg's sync one lets the SQL of
both stores be one body of code), so this is the one place where the store hands work to
threads. Connections are made lazily, one per thread, and replaced when they break."""
import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.auth.store import StoreUnavailable


class ConnectionThreads:
    def __init__(self, connect: Callable[[], Any], *, workers: int, begin_write: str,
                 unavailable_errors: tuple[type[Exception], ...], database_name: str):
        self._connect = connect
        self._begin_write = begin_write
        self._unavailable_errors = unavailable_errors
        self._database_name = database_name
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="auth-store")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[Any] = set()

    async def read(self, body: Callable[..., Any], *args: Any) -> Any:
        """body(connection, *args), outside any explicit transaction (each statement commits
        on its own: a read sees everything committed before it)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run_read, body, args)

    async def write(self, body: Callable[..., Any], *args: Any) -> Any:
        """body(connection, *args) in one transaction, committed if it returns."""
        # A caller cancelled while the thread runs does not stop it: the transaction commits
        # or not on its own (a reservation so orphaned holds only until it expires).
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run_write, body, args)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _run_read(self, body: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            reused = self._has_connection()
            try:
                return body(self._connection(), *args)
            except self._unavailable_errors as error:
                self._drop_connection()
                # A read may run twice: one more try replaces a connection that went stale
                # while idle (the database restarted since) without failing the call.
                if not (reused and attempt == 1):
                    raise self._unavailable(error) from error

    def _run_write(self, body: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            reused = self._has_connection()
            try:
                connection = self._connection()
                connection.execute(self._begin_write)
            except self._unavailable_errors as error:
                self._drop_connection()
                # Nothing but BEGIN was sent, so a stale connection may be replaced and the
                # transaction tried once more; a fresh one failing means the database is down.
                if reused and attempt == 1:
                    continue
                raise self._unavailable(error) from error
            try:
                result = body(connection, *args)
                connection.execute("COMMIT")
                return result
            except self._unavailable_errors as error:
                self._drop_connection()  # the database rolls back what was not committed
                raise self._unavailable(error) from error
            except BaseException:
                self._roll_back(connection)
                raise

    def _roll_back(self, connection: Any) -> None:
        try:
            connection.execute("ROLLBACK")
        except self._unavailable_errors:
            self._drop_connection()

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the {self._database_name} database is unavailable: "
                                f"{str(error).strip()}")

    def _has_connection(self) -> bool:
        return getattr(self._local, "connection", None) is not None

    def _connection(self) -> Any:
        if not self._has_connection():
            connection = self._connect()
            with self._lock:
                self._connections.add(connection)
            self._local.connection = connection
        return self._local.connection

    def _drop_connection(self) -> None:
        connection, self._local.connection = getattr(self._local, "connection", None), None
        if connection is None:
            return
        with self._lock:
            self._connections.discard(connection)
        try:
            connection.close()
        except self._unavailable_errors:
            pass  # broken already: that is why it is dropped

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()
