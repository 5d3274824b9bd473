"""What the SQLite and PostgreSQL stores share: the schema and the SQL, which both databases
speak. A subclass supplies the dialect: how to connect, how a write transaction begins, how a
tenant's budget is serialized, and how bytes and times are stored."""
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Self

from services.auth.store import (
    BudgetState, KeyExists, KeyRecord, PolicyVersionConflict, RequestIdConflict, ReserveResult,
    StoreError, TenantExists, TenantNotFound, TenantRecord, UsageRecord, UsageRow)
from services.auth.store_schema import SCHEMA, SCHEMA_VERSION
from services.auth.store_threads import ConnectionThreads

_TENANT = "SELECT id, display_name, created_at, policy, policy_version FROM tenants"
_KEY = ("SELECT id, tenant_id, name, role, prefix, secret_hash, created_at, revoked_at "
        "FROM api_keys")
_BUDGET_STATE = """SELECT
    COALESCE((SELECT spent_micro_usd FROM budget_spend
              WHERE tenant_id = ? AND period = ? AND scope = ?), 0),
    COALESCE((SELECT CAST(SUM(r.amount_micro_usd) AS BIGINT)
              FROM reservations r JOIN reservation_scopes s ON s.request_id = r.request_id
              WHERE r.tenant_id = ? AND r.period = ? AND s.scope = ? AND r.expires_at > ?), 0)"""


class _Held(NamedTuple):
    """A reservation as reserve and settle need it."""

    tenant_id: str
    amount_micro_usd: int
    scopes: tuple[str, ...]


class SqlStore:
    """An AuthStore in SQL both databases speak; subclasses add the dialect."""

    _NAME = "SQL"
    _BEGIN_WRITE = "BEGIN"
    _LOCK_ROW = ""
    """Appended to the tenant SELECT that starts every reserve and settle."""
    _SCHEMA_LOCK: str | None = None
    _BYTES = "BLOB"
    _TIME = "TEXT"
    _UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = ()

    def __init__(self, *, workers: int, clock: Callable[[], datetime]):
        self._clock = clock
        self._db = ConnectionThreads(self._connect, workers=workers,
                                     begin_write=self._BEGIN_WRITE,
                                     unavailable_errors=self._UNAVAILABLE_ERRORS,
                                     database_name=self._NAME)

    # The dialect.
    def _connect(self) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _to_db_time(self, at: datetime) -> Any:
        return at

    def _from_db_time(self, value: Any) -> datetime:
        return value.astimezone(UTC)

    # The AuthStore.
    async def create_tenant(self, tenant: TenantRecord) -> None:
        await self._db.write(self._create_tenant, tenant)

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        row = await self._db.read(self._row, f"{_TENANT} WHERE id = ?", (tenant_id,))
        return None if row is None else self._tenant(row)

    async def list_tenants(self) -> list[TenantRecord]:
        rows = await self._db.read(self._rows, f"{_TENANT} ORDER BY id")
        return [self._tenant(row) for row in rows]

    async def update_policy(self, tenant_id: str, policy: bytes,
                            expected_version: int = 0) -> int:
        return await self._db.write(self._update_policy, tenant_id, policy, expected_version)

    async def create_key(self, key: KeyRecord) -> None:
        await self._db.write(self._create_key, key)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._db.read(self._get_key, key_id)

    async def list_keys(self, tenant_id: str) -> list[KeyRecord]:
        return await self._db.read(self._list_keys, tenant_id)

    async def revoke_key(self, key_id: str, at: datetime) -> KeyRecord | None:
        return await self._db.write(self._revoke_key, key_id, self._time(at))

    async def revision(self) -> int:
        row = await self._db.read(self._row, "SELECT counter FROM store_revision WHERE id = 1")
        return row[0]

    async def reserve(self, request_id: str, tenant_id: str, period: str,
                      scopes: Sequence[tuple[str, int]], amount_micro_usd: int,
                      expires_at: datetime) -> ReserveResult:
        names = [scope for scope, _ in scopes]
        if len(set(names)) != len(names):
            raise ValueError(f"scopes must be distinct, got {names}")
        if amount_micro_usd < 0:
            raise ValueError(f"amount_micro_usd must be >= 0, got {amount_micro_usd}")
        return await self._db.write(self._reserve, request_id, tenant_id, period,
                                    tuple(scopes), amount_micro_usd, self._time(expires_at))

    async def release(self, request_id: str) -> bool:
        return await self._db.write(
            self._change, "DELETE FROM reservations WHERE request_id = ?", (request_id,)) > 0

    async def settle(self, record: UsageRecord) -> bool:
        return await self._db.write(self._settle, record)

    async def settle_many(self, records: Sequence[UsageRecord]) -> list[bool]:
        return await self._db.write(self._settle_many, tuple(records))

    async def usage(self, tenant_id: str, period: str, model: str = "",
                    group_by_label: str = "") -> list[UsageRow]:
        return await self._db.read(self._usage, tenant_id, period, model, group_by_label)

    async def budget_state(self, tenant_id: str, period: str, scope: str) -> BudgetState:
        return await self._db.read(self._budget_state_of_tenant, tenant_id, period, scope)

    async def close(self) -> None:
        await self._db.close()

    async def _started(self) -> Self:
        """The store, once its schema exists; closed again if that fails."""
        try:
            await self._db.write(self._create_schema)
        except BaseException:
            await self.close()
            raise
        return self

    # Transaction bodies: each runs in a worker thread, inside one transaction for a write.
    def _create_schema(self, db: Any) -> None:
        if self._SCHEMA_LOCK:
            db.execute(self._SCHEMA_LOCK)
        for statement in SCHEMA:
            db.execute(statement.format(bytes=self._BYTES, time=self._TIME))
        row = self._row(db, "SELECT MAX(version) FROM schema_version")
        if row[0] is None:
            self._change(db, "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise StoreError(f"the database's schema is version {row[0]}, newer than this auth "
                             f"service's ({SCHEMA_VERSION}): run a newer auth service")
        self._change(db, "INSERT INTO store_revision (id, counter) VALUES (1, 0) "
                         "ON CONFLICT (id) DO NOTHING")

    def _create_tenant(self, db: Any, tenant: TenantRecord) -> None:
        added = self._change(
            db, "INSERT INTO tenants (id, display_name, created_at, policy, policy_version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (tenant.id, tenant.display_name, self._time(tenant.created_at), tenant.policy,
             tenant.policy_version))
        if not added:
            raise TenantExists(f"tenant {tenant.id!r} exists already")
        self._bump_revision(db)

    def _update_policy(self, db: Any, tenant_id: str, policy: bytes,
                       expected_version: int) -> int:
        # One conditional UPDATE: two admins that read the same version cannot both apply.
        update = ("UPDATE tenants SET policy = ?, policy_version = policy_version + 1 "
                  "WHERE id = ?")
        values: tuple = (policy, tenant_id)
        if expected_version > 0:
            update, values = update + " AND policy_version = ?", values + (expected_version,)
        row = self._row(db, update + " RETURNING policy_version", values)
        if row is None:
            current = self._row(db, "SELECT policy_version FROM tenants WHERE id = ?",
                                (tenant_id,))
            if current is None:
                raise TenantNotFound(f"no tenant {tenant_id!r}")
            raise PolicyVersionConflict(
                f"tenant {tenant_id!r}'s policy is at version {current[0]}, not "
                f"{expected_version}", current_version=current[0])
        self._bump_revision(db)
        return row[0]

    def _create_key(self, db: Any, key: KeyRecord) -> None:
        self._require_tenant(db, key.tenant_id)
        revoked_at = None if key.revoked_at is None else self._time(key.revoked_at)
        added = self._change(
            db, "INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_hash, "
                "created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
            (key.id, key.tenant_id, key.name, key.role, key.prefix, key.secret_hash,
             self._time(key.created_at), revoked_at))
        if not added:
            raise KeyExists(f"API key {key.id!r} exists already")
        self._bump_revision(db)

    def _get_key(self, db: Any, key_id: str) -> KeyRecord | None:
        row = self._row(db, f"{_KEY} WHERE id = ?", (key_id,))
        return None if row is None else self._key(row)

    def _list_keys(self, db: Any, tenant_id: str) -> list[KeyRecord]:
        self._require_tenant(db, tenant_id)
        rows = self._rows(db, f"{_KEY} WHERE tenant_id = ? ORDER BY created_at, id",
                          (tenant_id,))
        return [self._key(row) for row in rows]

    def _revoke_key(self, db: Any, key_id: str, at: Any) -> KeyRecord | None:
        # Only a key still working is changed: a second revoke keeps the first time.
        if self._change(db, "UPDATE api_keys SET revoked_at = ? "
                            "WHERE id = ? AND revoked_at IS NULL", (at, key_id)):
            self._bump_revision(db)
        return self._get_key(db, key_id)

    def _reserve(self, db: Any, request_id: str, tenant_id: str, period: str,
                 scopes: tuple[tuple[str, int], ...], amount: int,
                 expires_at: Any) -> ReserveResult:
        self._lock_tenant_budget(db, tenant_id)
        now = self._time(self._clock())
        self._change(db, "DELETE FROM reservations WHERE tenant_id = ? AND expires_at <= ?",
                     (tenant_id, now))
        held = self._reservation(db, request_id)
        if held is not None:
            if held.tenant_id != tenant_id:
                raise RequestIdConflict(f"request id {request_id!r} is held for another tenant")
            return ReserveResult(True, held.amount_micro_usd)
        if self._row(db, "SELECT 1 FROM ledger WHERE request_id = ?", (request_id,)):
            raise RequestIdConflict(f"request id {request_id!r} was settled already; a new "
                                    f"call needs a new request id")
        for scope, limit in scopes:
            state = self._budget_state(db, tenant_id, period, scope, now)
            if state.spent_micro_usd + state.reserved_micro_usd + amount > limit:
                return ReserveResult(False, 0, scope, state.spent_micro_usd,
                                     state.reserved_micro_usd, limit)
        self._change(db, "INSERT INTO reservations (request_id, tenant_id, period, "
                         "amount_micro_usd, expires_at) VALUES (?, ?, ?, ?, ?)",
                     (request_id, tenant_id, period, amount, expires_at))
        for ordinal, (scope, _) in enumerate(scopes):
            self._change(db, "INSERT INTO reservation_scopes (request_id, scope, ordinal) "
                             "VALUES (?, ?, ?)", (request_id, scope, ordinal))
        return ReserveResult(True, amount)

    def _settle_many(self, db: Any, records: tuple[UsageRecord, ...]) -> list[bool]:
        # Tenants in id order: two replicas settling overlapping batches lock tenant rows in
        # the same order, so neither waits on the other in a cycle.
        recorded = [False] * len(records)
        for index in sorted(range(len(records)), key=lambda n: records[n].tenant_id):
            try:
                recorded[index] = self._settle(db, records[index])
            except RequestIdConflict:
                pass  # checked before any write for that record: nothing of it to undo
        return recorded

    def _settle(self, db: Any, record: UsageRecord) -> bool:
        self._lock_tenant_budget(db, record.tenant_id)
        held = self._reservation(db, record.request_id)
        if held is not None and held.tenant_id != record.tenant_id:
            raise RequestIdConflict(
                f"request id {record.request_id!r} is held for another tenant")
        added = self._change(
            db, "INSERT INTO ledger (request_id, tenant_id, period, model, replica, "
                "prompt_tokens, completion_tokens, cost_micro_usd, outcome, "
                "time_to_first_token_seconds, total_seconds, policy_version, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO NOTHING",
            (record.request_id, record.tenant_id, record.period, record.model, record.replica,
             record.prompt_tokens, record.completion_tokens, record.cost_micro_usd,
             record.outcome, record.time_to_first_token_seconds, record.total_seconds,
             record.policy_version, self._time(record.recorded_at)))
        if not added:
            return False
        for key, value in sorted(record.labels.items()):
            self._change(db, "INSERT INTO ledger_labels (request_id, label_key, label_value) "
                             "VALUES (?, ?, ?)", (record.request_id, key, value))
        for scope in held.scopes if held is not None else record.scopes:
            self._change(
                db, "INSERT INTO budget_spend (tenant_id, period, scope, spent_micro_usd) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, period, scope) DO UPDATE "
                    "SET spent_micro_usd = budget_spend.spent_micro_usd + "
                    "excluded.spent_micro_usd",
                (record.tenant_id, record.period, scope, record.cost_micro_usd))
        if held is not None:
            self._change(db, "DELETE FROM reservations WHERE request_id = ?",
                         (record.request_id,))
        return True

    def _usage(self, db: Any, tenant_id: str, period: str, model: str,
               group_by_label: str) -> list[UsageRow]:
        self._require_tenant(db, tenant_id)
        group, join, params = "l.model", "", []
        if group_by_label:
            group = "COALESCE(b.label_value, '')"
            join = ("LEFT JOIN ledger_labels b "
                    "ON b.request_id = l.request_id AND b.label_key = ?")
            params.append(group_by_label)
        where = "l.tenant_id = ? AND l.period = ?" + (" AND l.model = ?" if model else "")
        params += [tenant_id, period] + ([model] if model else [])
        rows = self._rows(
            db, f"SELECT {group}, COUNT(*), CAST(SUM(l.prompt_tokens) AS BIGINT), "
                f"CAST(SUM(l.completion_tokens) AS BIGINT), CAST(SUM(l.cost_micro_usd) AS BIGINT) "
                f"FROM ledger l {join} WHERE {where} GROUP BY 1 ORDER BY 1", params)
        if group_by_label:
            return [UsageRow("", *row) for row in rows]
        return [UsageRow(row[0], "", *row[1:]) for row in rows]

    def _budget_state_of_tenant(self, db: Any, tenant_id: str, period: str,
                                scope: str) -> BudgetState:
        self._require_tenant(db, tenant_id)
        return self._budget_state(db, tenant_id, period, scope, self._time(self._clock()))

    def _budget_state(self, db: Any, tenant_id: str, period: str, scope: str,
                      now: Any) -> BudgetState:
        spent, reserved = self._row(db, _BUDGET_STATE,
                                    (tenant_id, period, scope, tenant_id, period, scope, now))
        return BudgetState(spent, reserved)

    def _lock_tenant_budget(self, db: Any, tenant_id: str) -> None:
        # Every reserve and settle of a tenant passes here first, so they run one at a time:
        # SQLite's BEGIN IMMEDIATE has taken the database's write lock already, PostgreSQL
        # locks the tenant's row. READ COMMITTED alone would let two reserves both read the
        # same spent + reserved and both be admitted.
        self._require_tenant(db, tenant_id, lock=True)

    def _require_tenant(self, db: Any, tenant_id: str, *, lock: bool = False) -> None:
        sql = "SELECT id FROM tenants WHERE id = ?" + (self._LOCK_ROW if lock else "")
        if self._row(db, sql, (tenant_id,)) is None:
            raise TenantNotFound(f"no tenant {tenant_id!r}")

    def _reservation(self, db: Any, request_id: str) -> _Held | None:
        row = self._row(db, "SELECT tenant_id, amount_micro_usd FROM reservations "
                            "WHERE request_id = ?", (request_id,))
        if row is None:
            return None
        scopes = self._rows(db, "SELECT scope FROM reservation_scopes WHERE request_id = ? "
                                "ORDER BY ordinal", (request_id,))
        return _Held(row[0], row[1], tuple(scope for scope, in scopes))

    def _bump_revision(self, db: Any) -> None:
        self._change(db, "UPDATE store_revision SET counter = counter + 1 WHERE id = 1")

    def _tenant(self, row: Sequence[Any]) -> TenantRecord:
        return TenantRecord(row[0], row[1], self._from_db_time(row[2]), bytes(row[3]), row[4])

    def _key(self, row: Sequence[Any]) -> KeyRecord:
        return KeyRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5]),
                         self._from_db_time(row[6]),
                         None if row[7] is None else self._from_db_time(row[7]))

    def _time(self, at: datetime) -> Any:
        if at.tzinfo is None:
            raise ValueError(f"times must be timezone-aware (UTC), got naive {at.isoformat()}")
        return self._to_db_time(at.astimezone(UTC))

    def _row(self, db: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        # fetchall: an UPDATE ... RETURNING must run to its end before the COMMIT.
        rows = db.execute(self._sql(sql), params).fetchall()
        return rows[0] if rows else None

    def _rows(self, db: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return db.execute(self._sql(sql), params).fetchall()

    def _change(self, db: Any, sql: str, params: Sequence[Any] = ()) -> int:
        return db.execute(self._sql(sql), params).rowcount

