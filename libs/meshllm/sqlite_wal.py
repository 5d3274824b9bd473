"""Opening a SQLite file that several processes share in WAL mode."""
import sqlite3
import time


def switch_to_wal(db: sqlite3.Connection, lock_wait_seconds: float) -> None:
    """Changing the journal mode takes an exclusive lock that SQLite does not wait for (the
    busy timeout does not apply): two replicas opening one new database at once see
    "database is locked" here. Retried within the lock wait; call it off the event loop."""
    deadline = time.monotonic() + lock_wait_seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
