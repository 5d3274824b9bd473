"""The tenant and admin key a local mesh starts with, so `make up` is usable at once.

The secret lives in a file beside the mesh's database (mode 0600), because the store keeps only
its hash: the same key works across restarts, and `make up` can print it every time."""
import os
from datetime import UTC, datetime
from pathlib import Path

from meshllm.api.auth.v1 import auth_pb2
from services.auth import store as stores
from services.auth.keys import key_id_of, new_key, secret_matches
from services.auth.policy import default_policy

DEV_TENANT = "dev"


async def ensure_dev_tenant(store: stores.AuthStore, key_file: Path) -> str:
    """The dev tenant's admin key secret, made (tenant, key, file) if not there yet."""
    if key_file.exists():
        secret = key_file.read_text().strip()
        key_id = key_id_of(secret)
        record = await store.get_key(key_id) if key_id else None
        if record is not None and record.revoked_at is None \
                and secret_matches(secret, record.secret_hash):
            return secret
    if await store.get_tenant(DEV_TENANT) is None:
        await store.create_tenant(stores.TenantRecord(
            id=DEV_TENANT, display_name="Local development", created_at=datetime.now(UTC),
            policy=default_policy().SerializeToString(deterministic=True), policy_version=1))
    key = new_key()
    await store.create_key(stores.KeyRecord(
        id=key.key_id, tenant_id=DEV_TENANT, name="make up", role=auth_pb2.API_KEY_ROLE_ADMIN,
        prefix=key.prefix, secret_hash=key.secret_hash, created_at=datetime.now(UTC)))
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(key.secret + "\n")
    return key.secret
