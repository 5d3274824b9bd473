"""Keys and tenants as auth replicas serve them: from memory, dropped whenever the store says
anything changed.

Every replica polls the store's revision (one cheap query) every `refresh_seconds`; a change —
a revoked key, a new policy — empties the cache, so a revocation made through any replica
stops the key on all of them within one poll plus one lookup. Unknown key ids are cached too,
so a client spraying made-up keys costs the store one query per id per revision."""
import asyncio
import base64
from dataclasses import dataclass

from meshllm.api.auth.v1 import auth_pb2
from meshllm.logging import get_logger
from services.auth.keys import key_id_of, secret_matches

log = get_logger(__name__)
MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True)
class TenantView:
    """A tenant's policy, parsed once and encoded once for the headers Envoy adds."""

    tenant_id: str
    policy: auth_pb2.Policy
    policy_version: int
    policy_header: str  # base64 of the serialized policy, as gRPC binary metadata travels


@dataclass(frozen=True)
class Identity:
    key_id: str
    role: int
    tenant: TenantView


@dataclass(frozen=True)
class _KeyEntry:
    key_id: str
    role: int
    tenant_id: str
    secret_hash: bytes


class IdentityCache:
    def __init__(self, store, refresh_seconds: float = 0.25):
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._keys: dict[str, _KeyEntry | None] = {}
        self._tenants: dict[str, TenantView | None] = {}
        self._revision: int | None = None
        self._generation = 0  # bumped by forget(): a lookup that straddles one is not cached

    async def identity(self, secret: str) -> Identity | None:
        """Who `secret` belongs to; None for a malformed, unknown or revoked key."""
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        if key_id in self._keys:
            entry = self._keys[key_id]
        else:
            generation = self._generation
            entry = await self._load_key(key_id)
            if generation == self._generation:
                if len(self._keys) >= MAX_CACHED_KEYS:
                    self._keys.clear()  # made-up ids, most likely: start over, stay bounded
                self._keys[key_id] = entry
        if entry is None or not secret_matches(secret, entry.secret_hash):
            return None
        tenant = await self.tenant(entry.tenant_id)
        return None if tenant is None else Identity(entry.key_id, entry.role, tenant)

    async def tenant(self, tenant_id: str) -> TenantView | None:
        if tenant_id in self._tenants:
            return self._tenants[tenant_id]
        generation = self._generation
        record = await self._store.get_tenant(tenant_id)
        view = None if record is None else TenantView(
            record.id, auth_pb2.Policy.FromString(record.policy), record.policy_version,
            base64.b64encode(record.policy).decode())
        if generation == self._generation:
            self._tenants[tenant_id] = view
        return view

    def forget(self) -> None:
        self._generation += 1
        self._keys.clear()
        self._tenants.clear()

    async def follow_store(self) -> None:
        """Runs for the replica's life: empties the cache whenever the store's revision moves."""
        while True:
            try:
                revision = await self._store.revision()
                if revision != self._revision:
                    self.forget()
                    self._revision = revision
            except Exception as error:  # noqa: BLE001 - a store outage must not end the loop
                # Unknown state: forget rather than serve a key that may have been revoked.
                self.forget()
                self._revision = None
                log.warning("store_revision_unreadable", error=str(error))
            await asyncio.sleep(self._refresh_seconds)

    async def _load_key(self, key_id: str) -> _KeyEntry | None:
        record = await self._store.get_key(key_id)
        if record is None or record.revoked_at is not None:
            return None
        return _KeyEntry(record.id, record.role, record.tenant_id, record.secret_hash)
