"""Router settings: MESHLLM_ROUTER_*."""
from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLLM_ROUTER_", extra="ignore")

    mesh_address: str = "127.0.0.1:8081"
    """Envoy's mesh listener; every call to generation goes through it."""
    default_model: str = ""
    """Model for requests that name none; empty means: the only model, if there is one."""
    catalog_refresh_seconds: float = 1.0
    """How stale the router's view of the registry's models may get."""
    catalog_forget_after_seconds: float = 10.0
    """A model the registry stops listing stays routable this long (a control plane that
    restarted lists nothing until replicas re-register); longer than a lease TTL."""
    replica_id: str = ""
    """Id to register under; empty makes one from host and port."""
    max_held_calls_per_pool: int = 20
    """Calls held per model while its pool starts from zero; more get RESOURCE_EXHAUSTED."""
    waiting_event_seconds: float = 2.0
    """How often a held call's stream repeats its waiting event."""
    moderation_timeout_seconds: float = 2.0
    """How long the router waits for a moderation verdict (the input's, or an output
    window's) before the call fails closed, or goes on unchecked if the tenant's policy fails
    open."""
    retrieval_timeout_seconds: float = 2.0
    """How long the router waits for retrieval's passages before the call fails (or goes on
    without context, when the request allows it)."""
