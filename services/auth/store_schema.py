"""The auth store's tables, as both databases create them when a store opens (idempotent).

Money is BIGINT micro-USD. A reservation's scopes are rows of their own, so the live amount
held in one scope is a plain SUM over a JOIN; a ledger row's labels likewise, so usage groups
by a label with a JOIN both databases speak."""

SCHEMA_VERSION = 1
# {bytes} and {time} are the dialect's column types.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS store_revision (id INTEGER PRIMARY KEY, counter BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY, display_name TEXT NOT NULL, created_at {time} NOT NULL,
        policy {bytes} NOT NULL, policy_version BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants (id),
        name TEXT NOT NULL, role INTEGER NOT NULL, prefix TEXT NOT NULL,
        secret_hash {bytes} NOT NULL, created_at {time} NOT NULL, revoked_at {time})""",
    "CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, created_at)",
    """CREATE TABLE IF NOT EXISTS budget_spend (
        tenant_id TEXT NOT NULL REFERENCES tenants (id), period TEXT NOT NULL,
        scope TEXT NOT NULL, spent_micro_usd BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, period, scope))""",
    """CREATE TABLE IF NOT EXISTS reservations (
        request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants (id),
        period TEXT NOT NULL, amount_micro_usd BIGINT NOT NULL, expires_at {time} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS reservations_by_tenant ON reservations (tenant_id, period)",
    """CREATE TABLE IF NOT EXISTS reservation_scopes (
        request_id TEXT NOT NULL REFERENCES reservations (request_id) ON DELETE CASCADE,
        scope TEXT NOT NULL, ordinal INTEGER NOT NULL, PRIMARY KEY (request_id, scope))""",
    """CREATE TABLE IF NOT EXISTS ledger (
        request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants (id),
        period TEXT NOT NULL, model TEXT NOT NULL, replica TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        cost_micro_usd BIGINT NOT NULL, outcome TEXT NOT NULL,
        time_to_first_token_seconds DOUBLE PRECISION, total_seconds DOUBLE PRECISION NOT NULL,
        policy_version BIGINT NOT NULL, recorded_at {time} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ledger_by_tenant ON ledger (tenant_id, period, model)",
    """CREATE TABLE IF NOT EXISTS ledger_labels (
        request_id TEXT NOT NULL REFERENCES ledger (request_id), label_key TEXT NOT NULL,
        label_value TEXT NOT NULL, PRIMARY KEY (request_id, label_key))""",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
)
