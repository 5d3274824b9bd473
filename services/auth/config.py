"""Auth settings: MESHLLM_AUTH_*, plus the shared store URLs every replica must agree on."""
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLLM_AUTH_", extra="ignore")

    database_url: str = Field(
        "sqlite:///.meshllm/auth.db",
        validation_alias=AliasChoices("MESHLLM_DATABASE_URL", "MESHLLM_AUTH_DATABASE_URL"))
    """Tenants, key hashes, budgets and the usage ledger: `sqlite:///<file>` (the default) or
    `postgresql://...` for any number of auth replicas on more than one machine."""
    redis_url: str = Field(
        "", validation_alias=AliasChoices("MESHLLM_REDIS_URL", "MESHLLM_AUTH_REDIS_URL"))
    """Rate-limit counters shared by every auth replica; empty keeps them in this process
    (right for one replica only: each replica would allow the whole limit)."""
    limits_fail_open: bool = False
    """When the counters (Redis) cannot be reached: False refuses calls (RESOURCE_EXHAUSTED,
    retry shortly), True lets them through uncounted. Budgets always fail closed."""
    cache_refresh_seconds: float = 0.25
    """How often a replica checks the store for revoked keys and changed policies."""
    replica_id: str = ""
    """Id to register under; empty makes one from host and port."""
    reservation_seconds: float = 3600.0
    """How long a call's reservation holds if the router never settles it (it crashed)."""
