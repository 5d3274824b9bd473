"""The verdict trail in one SQLite file: one hash chain per tenant, with signed checkpoints.

WAL lets exports read beside the writer; synchronous=FULL syncs the WAL at every commit, so
a verdict that was written survives a power cut. Every write begins IMMEDIATE, taking the
write lock before it reads a chain's head: moderation replicas on one machine sharing the
file never give two records one sequence. sqlite3 only blocks, so every statement runs on
the store's one worker thread, with the one connection that thread owns."""
import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.audit_chain import (GENESIS_HASH, TrailItem, as_float32,
                                             checkpoint_message, record_hash)
from meshllm.audit_signing import AuditSigner
from meshllm.sqlite_wal import switch_to_wal

# How long a write waits for another replica's write lock before it fails.
_LOCK_WAIT_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    category INTEGER NOT NULL,
    action INTEGER NOT NULL,
    detector TEXT NOT NULL,
    score REAL NOT NULL,
    time_ns INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (tenant_id, sequence)
);
CREATE INDEX IF NOT EXISTS audit_records_by_request
    ON audit_records (tenant_id, request_id, sequence);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tenant_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    hash TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    signature BLOB NOT NULL,
    key_id TEXT NOT NULL,
    UNIQUE (tenant_id, sequence)
);
-- Each chain's head and last checkpoint. Appends chain onto this, not onto the last row of
-- audit_records: a record deleted from the end of a chain leaves a gap the next append
-- makes visible, rather than a sequence silently reused.
CREATE TABLE IF NOT EXISTS audit_heads (
    tenant_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    hash TEXT NOT NULL,
    checkpoint_sequence INTEGER NOT NULL,
    checkpoint_time_ns INTEGER NOT NULL
);
"""
_RECORD_COLUMNS = ("sequence, request_id, tenant_id, stage, category, action, detector, "
                   "score, time_ns, policy_version, previous_hash, hash")
_CHECKPOINT_COLUMNS = "tenant_id, sequence, hash, time_ns, signature, key_id"


@dataclass(frozen=True)
class VerdictEntry:
    """One verdict to record; the store gives it its place in the tenant's chain."""

    request_id: str
    tenant_id: str
    stage: int  # moderation_pb2.Stage
    category: int  # moderation_pb2.Category
    action: int  # moderation_pb2.Action
    detector: str
    score: float
    time_ns: int
    policy_version: int


class AuditStore:
    def __init__(self, path: Path | str, signer: AuditSigner, *,
                 checkpoint_every_records: int = 100, checkpoint_every_seconds: float = 10.0,
                 export_page_size: int = 1000, clock_ns: Callable[[], int] = time.time_ns):
        self._path = Path(path)
        self._signer = signer
        self._checkpoint_every_records = checkpoint_every_records
        self._checkpoint_every_ns = int(checkpoint_every_seconds * 1e9)
        self._export_page_size = export_page_size
        self._clock_ns = clock_ns
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-store")
        self._db: sqlite3.Connection | None = None  # touched by the worker thread only
        self._closed = False

    @classmethod
    async def open(cls, path: Path | str, signer: AuditSigner, **settings: Any) -> "AuditStore":
        """A store whose file and tables exist (made on the first start)."""
        store = cls(path, signer, **settings)
        await store._write(_create_tables)
        return store

    async def append(self, entries: list[VerdictEntry]) -> None:
        """Chains the entries onto their tenants' chains in one transaction, with the
        checkpoints that fall due."""
        if entries:
            await self._write(self._append, entries)

    async def checkpoint_idle_chains(self) -> None:
        """Checkpoints every chain with records no checkpoint covers yet that has had none for
        `checkpoint_every_seconds`: a chain that went quiet still gets its tail signed."""
        await self._write(self._checkpoint_idle_chains)

    async def verdicts_for(self, tenant_id: str,
                           request_id: str) -> list[moderation_pb2.AuditRecord]:
        """The tenant's records of one request, oldest first."""
        rows = await self._read(lambda db: db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM audit_records WHERE tenant_id = ? AND "
            "request_id = ? ORDER BY sequence", (tenant_id, request_id)).fetchall())
        return [_record(row) for row in rows]

    async def export(self, tenant_id: str, from_sequence: int = 1) -> AsyncIterator[TrailItem]:
        """The tenant's records and checkpoints in chain order (a checkpoint right after the
        record at its sequence), read a page at a time."""
        after = max(from_sequence, 1) - 1
        while True:
            records, checkpoints = await self._read(self._export_page, tenant_id, after)
            items = sorted([(row[0], 0, _record(row)) for row in records]
                           + [(row[1], 1, _checkpoint(row)) for row in checkpoints],
                           key=lambda item: item[:2])
            for _, _, item in items:
                yield item
            if not records:
                return
            after = records[-1][0]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._run(self._close_connection)
        self._executor.shutdown(wait=True)

    # Everything below runs on the worker thread.

    def _append(self, db: sqlite3.Connection, entries: list[VerdictEntry]) -> None:
        now_ns = self._clock_ns()
        by_tenant: dict[str, list[VerdictEntry]] = {}
        for entry in entries:
            by_tenant.setdefault(entry.tenant_id, []).append(entry)
        for tenant_id, tenant_entries in by_tenant.items():
            head = db.execute("SELECT sequence, hash, checkpoint_sequence, checkpoint_time_ns "
                              "FROM audit_heads WHERE tenant_id = ?", (tenant_id,)).fetchone()
            sequence, last_hash, checkpoint_sequence, checkpoint_ns = (
                head or (0, GENESIS_HASH, 0, 0))
            rows = []
            for entry in tenant_entries:
                sequence += 1
                fields = dict(sequence=sequence, request_id=entry.request_id,
                              tenant_id=tenant_id, stage=entry.stage, category=entry.category,
                              action=entry.action, detector=entry.detector,
                              score=as_float32(entry.score), time_ns=entry.time_ns,
                              policy_version=entry.policy_version, previous_hash=last_hash)
                last_hash = record_hash(**fields)
                rows.append((*fields.values(), last_hash))
            db.executemany(f"INSERT INTO audit_records ({_RECORD_COLUMNS}) VALUES "
                           f"({', '.join('?' * 12)})", rows)
            db.execute("INSERT INTO audit_heads VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id) "
                       "DO UPDATE SET sequence = excluded.sequence, hash = excluded.hash",
                       (tenant_id, sequence, last_hash, checkpoint_sequence, checkpoint_ns))
            if (sequence - checkpoint_sequence >= self._checkpoint_every_records
                    or now_ns - checkpoint_ns >= self._checkpoint_every_ns):
                self._checkpoint(db, tenant_id, sequence, last_hash, now_ns)

    def _checkpoint_idle_chains(self, db: sqlite3.Connection) -> None:
        now_ns = self._clock_ns()
        heads = db.execute("SELECT tenant_id, sequence, hash FROM audit_heads WHERE "
                           "sequence > checkpoint_sequence AND checkpoint_time_ns <= ?",
                           (now_ns - self._checkpoint_every_ns,)).fetchall()
        for tenant_id, sequence, hash_hex in heads:
            self._checkpoint(db, tenant_id, sequence, hash_hex, now_ns)

    def _checkpoint(self, db: sqlite3.Connection, tenant_id: str, sequence: int,
                    hash_hex: str, now_ns: int) -> None:
        signature = self._signer.sign(checkpoint_message(tenant_id, sequence, hash_hex, now_ns))
        db.execute(f"INSERT INTO audit_checkpoints ({_CHECKPOINT_COLUMNS}) VALUES "
                   "(?, ?, ?, ?, ?, ?)",
                   (tenant_id, sequence, hash_hex, now_ns, signature, self._signer.key_id))
        db.execute("UPDATE audit_heads SET checkpoint_sequence = ?, checkpoint_time_ns = ? "
                   "WHERE tenant_id = ?", (sequence, now_ns, tenant_id))

    def _export_page(self, db: sqlite3.Connection, tenant_id: str,
                     after: int) -> tuple[list[tuple], list[tuple]]:
        records = db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM audit_records WHERE tenant_id = ? AND "
            "sequence > ? ORDER BY sequence LIMIT ?",
            (tenant_id, after, self._export_page_size)).fetchall()
        # The checkpoints up to this page's last record; after the last page, every one left
        # (a checkpoint beyond the last record tells the verifier the trail was cut short).
        upper = records[-1][0] if records else None
        checkpoints = db.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE tenant_id = ? AND "
            "sequence > ? AND (? IS NULL OR sequence <= ?) ORDER BY sequence",
            (tenant_id, after, upper, upper)).fetchall()
        return records, checkpoints

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are the store's own BEGIN/COMMIT.
            db = sqlite3.connect(self._path, timeout=_LOCK_WAIT_SECONDS,
                                 isolation_level=None, check_same_thread=False)
            switch_to_wal(db, _LOCK_WAIT_SECONDS)
            db.execute("PRAGMA synchronous = FULL")
            self._db = db
        return self._db

    def _in_transaction(self, begin: str, body: Callable[..., Any], args: tuple) -> Any:
        db = self._connection()
        db.execute(begin)
        try:
            result = body(db, *args)
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _close_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        # A caller cancelled while the thread runs does not stop it: the transaction commits
        # or not on its own, and the next call queues behind it.
        return await asyncio.get_running_loop().run_in_executor(self._executor, function,
                                                                *args)

    async def _write(self, body: Callable[..., Any], *args: Any) -> Any:
        return await self._run(self._in_transaction, "BEGIN IMMEDIATE", body, args)

    async def _read(self, body: Callable[..., Any], *args: Any) -> Any:
        # One snapshot per read: a page's records and checkpoints agree with each other.
        return await self._run(self._in_transaction, "BEGIN", body, args)


def _create_tables(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript would commit the write transaction first.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _timestamp(time_ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time_ns)
    return stamp


def _record(row: tuple) -> moderation_pb2.AuditRecord:
    (sequence, request_id, tenant_id, stage, category, action, detector, score, time_ns,
     policy_version, previous_hash, hash_hex) = row
    return moderation_pb2.AuditRecord(
        sequence=sequence, request_id=request_id, tenant_id=tenant_id, stage=stage,
        category=category, action=action, detector=detector, score=score,
        time=_timestamp(time_ns), policy_version=policy_version,
        previous_hash=previous_hash, hash=hash_hex)


def _checkpoint(row: tuple) -> moderation_pb2.AuditCheckpoint:
    tenant_id, sequence, hash_hex, time_ns, signature, key_id = row
    return moderation_pb2.AuditCheckpoint(
        tenant_id=tenant_id, sequence=sequence, hash=hash_hex, time=_timestamp(time_ns),
        signature=signature, key_id=key_id)
