"""Control plane settings: MESHLLM_CONTROLPLANE_*."""
from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings
from services.controlplane.resources import EnvoyLayout


class ControlPlaneSettings(ServiceSettings):
    """Where the control plane listens, how long leases last, and what Envoy exposes."""

    model_config = SettingsConfigDict(env_prefix="MESHLLM_CONTROLPLANE_", extra="ignore")

    port: int = 18000
    """gRPC port for RegistryService and ADS (Envoy's bootstrap points here)."""
    lease_ttl_seconds: float = 3.0
    """A replica that neither registers nor heartbeats for this long is dropped."""
    eds_grace_seconds: float | None = None
    """After a start, Envoys that already hold a config get no push for this long, so
    replicas can re-register first (DESIGN §8). None means one lease TTL."""
    listen_host: str = "127.0.0.1"
    """Address of Envoy's public and mesh listeners."""
    public_port: int = 8080
    mesh_port: int = 8081
    admin_port: int = 9901
    """Envoy's admin port, written into the bootstrap (render_bootstrap)."""
    node_id: str = "meshllm-envoy"
    stream_idle_timeout_seconds: float = 300.0
    """A stream with no bytes either way for this long is reset by Envoy."""
    connect_timeout_seconds: float = 1.0
    """Envoy's TCP connect timeout to a replica (a failure is retried on another host)."""

    @property
    def eds_grace(self) -> float:
        return self.lease_ttl_seconds if self.eds_grace_seconds is None else self.eds_grace_seconds

    def envoy_layout(self) -> EnvoyLayout:
        return EnvoyLayout(
            listen_host=self.listen_host,
            public_port=self.public_port,
            mesh_port=self.mesh_port,
            stream_idle_timeout_seconds=self.stream_idle_timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
        )
