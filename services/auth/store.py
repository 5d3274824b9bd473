"""The auth service's durable store: what it keeps, the one interface both databases implement,
and `open_store`, which picks the database from a URL.

It keeps tenants and their policies, API keys (only a hash of each secret: the store never sees
a secret), budgets (what each scope has spent and holds in reservations) and the usage ledger.
Money is int micro-USD; times are timezone-aware datetimes, stored as UTC."""
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol


class StoreError(Exception):
    """Base of the store's errors; the message says what was wrong."""


class TenantExists(StoreError):
    """A tenant with this id exists already."""


class TenantNotFound(StoreError):
    """No tenant has this id."""


class PolicyVersionConflict(StoreError):
    """The policy is no longer at the version the caller expected."""

    def __init__(self, message: str, current_version: int):
        super().__init__(message)
        self.current_version = current_version


class KeyExists(StoreError):
    """An API key with this id exists already."""


class RequestIdConflict(StoreError):
    """A request id that cannot be used: settled already, or held for another tenant."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or stayed locked. A write that failed so may or may
    not have committed; reserve and settle are idempotent on the request id, so a caller may
    retry them."""


@dataclass(frozen=True)
class TenantRecord:
    """A tenant as stored; a new one starts at policy version 1."""

    id: str
    display_name: str
    created_at: datetime
    policy: bytes
    """A serialized meshllm.auth.v1.Policy: the store keeps it as it is given."""
    policy_version: int


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: who owns it and a hash of its secret, never the secret."""

    id: str
    tenant_id: str
    name: str
    role: int
    """A meshllm.auth.v1.ApiKeyRole value."""
    prefix: str
    secret_hash: bytes
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class ReserveResult:
    """What a reserve did: held `amount_micro_usd` against every scope, or held nothing
    because `scope` could not take it (where that scope stood is in the other fields)."""

    admitted: bool
    amount_micro_usd: int
    """Held now; on a repeated request id, what its reservation holds."""
    scope: str = ""
    spent: int = 0
    """micro-USD charged to the refusing scope by settled calls this period."""
    reserved: int = 0
    """micro-USD held in the refusing scope by live reservations."""
    limit: int = 0


class BudgetState(NamedTuple):
    """One scope of one period: charged by settled calls, and held by live reservations."""

    spent_micro_usd: int
    reserved_micro_usd: int


@dataclass(frozen=True)
class UsageRecord:
    """One ended call, as the ledger keeps it; `request_id` is unique across the ledger."""

    request_id: str
    tenant_id: str
    period: str
    """The calendar month (UTC) the call is charged to, "YYYY-MM"."""
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    labels: Mapping[str, str]
    outcome: str
    time_to_first_token_seconds: float | None
    total_seconds: float
    policy_version: int
    recorded_at: datetime
    scopes: tuple[str, ...] = ()
    """Scopes to charge when the call has no reservation (one that expired before the call
    ended); a reservation's own scopes win."""


@dataclass(frozen=True)
class UsageRow:
    """The ledger's sum over one group: a model, or a label's value ("" for calls without
    the label); the other of the two is ""."""

    model: str
    label_value: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int


class AuthStore(Protocol):
    """What the auth service keeps, in SQLite or PostgreSQL; every method is one transaction."""

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Raises TenantExists."""

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None: ...

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by id."""

    async def update_policy(self, tenant_id: str, policy: bytes,
                            expected_version: int = 0) -> int:
        """Replaces the policy; returns its new version (one more than before). With an
        `expected_version` above 0, only if the policy is still at that version. Raises
        TenantNotFound, or PolicyVersionConflict."""

    async def create_key(self, key: KeyRecord) -> None:
        """Raises KeyExists, or TenantNotFound for a key of no tenant."""

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, tenant_id: str) -> list[KeyRecord]:
        """The tenant's keys, revoked ones included, oldest first. Raises TenantNotFound."""

    async def revoke_key(self, key_id: str, at: datetime) -> KeyRecord | None:
        """The key as revoked (revoking it again keeps the first time); None if no such key."""

    async def revision(self) -> int:
        """A counter that grows with every change to tenants, policies and keys, seen by every
        store on the same database: replicas poll it to know when their key cache is stale."""

    async def reserve(self, request_id: str, tenant_id: str, period: str,
                      scopes: Sequence[tuple[str, int]], amount_micro_usd: int,
                      expires_at: datetime) -> ReserveResult:
        """Holds `amount_micro_usd` against every (scope, limit) of `scopes` if, for each,
        spent + live reservations + amount <= limit; otherwise holds nothing and names the first
        scope that refused. Atomic across every store on the same database. A request id that
        is reserved already is admitted with what it holds. Raises TenantNotFound, or
        RequestIdConflict for a request id settled before or held for another tenant."""

    async def release(self, request_id: str) -> bool:
        """Drops a reservation without charging anything; False if there was none."""

    async def settle(self, record: UsageRecord) -> bool:
        """Appends the call to the ledger, charges its cost to its reservation's scopes (or,
        without one, to `record.scopes`) and drops the reservation, in one transaction.
        False, and nothing changed, when the request id was settled before.
        Raises TenantNotFound, or RequestIdConflict if another tenant holds the request id."""

    async def settle_many(self, records: Sequence[UsageRecord]) -> list[bool]:
        """`settle` for each record, all in one transaction (one commit); a record whose id
        is held for another tenant is not recorded (False) and does not stop the others."""

    async def usage(self, tenant_id: str, period: str, model: str = "",
                    group_by_label: str = "") -> list[UsageRow]:
        """The ledger's sums for a period: one row per model, or per value of the label
        `group_by_label`; only `model`'s calls when it is set. Rows by group.
        Raises TenantNotFound."""

    async def budget_state(self, tenant_id: str, period: str, scope: str) -> BudgetState:
        """Raises TenantNotFound."""

    async def close(self) -> None:
        """Closes the store's connections; the store cannot be used after."""


def utc_now() -> datetime:
    return datetime.now(UTC)


async def open_store(database_url: str, *,
                     clock: Callable[[], datetime] = utc_now) -> AuthStore:
    """Opens the store a URL names, creating its schema if the database has none.

    `sqlite:///<path>` (the rest of the URL is the file's path: `sqlite:///auth.db` is
    relative, `sqlite:////var/lib/auth.db` absolute) or `postgresql://…` (libpq's URL).
    `clock` says when reservations expire; tests move it."""
    # Imported here: both implementations import this module's dataclasses.
    if database_url.startswith("sqlite:///"):
        from services.auth.sqlite_store import SqliteStore
        return await SqliteStore.open(database_url.removeprefix("sqlite:///"), clock=clock)
    if database_url.startswith(("postgresql://", "postgres://")):
        from services.auth.postgres_store import PostgresStore
        return await PostgresStore.open(database_url, clock=clock)
    scheme = database_url.partition("://")[0] if "://" in database_url else database_url[:20]
    raise ValueError(f"database URL must start with sqlite:/// or postgresql://, got "
                     f"{scheme!r}")
