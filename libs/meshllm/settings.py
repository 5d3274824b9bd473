"""Settings every service shares; each service subclasses with its own env prefix."""
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Where a service listens and how it behaves on a laptop by default.

    A subclass sets `model_config = SettingsConfigDict(env_prefix="MESHLLM_<SERVICE>_")`.
    """

    model_config = SettingsConfigDict(env_prefix="MESHLLM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0
    """gRPC port; 0 picks a free one (the bound port is logged and registered)."""
    metrics_port: int = 0
    """Prometheus /metrics port; 0 picks a free one, -1 turns it off."""
    drain_grace_seconds: float = 20.0
    """On SIGTERM, how long in-flight streams get to finish before they are cut."""
    log_level: str = "info"
    controlplane_address: str = "127.0.0.1:18000"
    """host:port of the control plane's registry; empty means do not register."""
    max_receive_message_bytes: int = 4 * 1024 * 1024
    otel_console: bool = False
    """Print finished spans as JSON to stderr (there is no collector by default)."""
