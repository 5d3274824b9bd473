"""Control plane settings: MESHLLM_CONTROLPLANE_*."""
from typing import Literal

from google.protobuf import json_format
from pydantic_settings import SettingsConfigDict

from meshllm.api.auth.v1 import auth_pb2

from meshllm.settings import ServiceSettings
from services.controlplane.resources import EnvoyLayout


class ControlPlaneSettings(ServiceSettings):
    """Where the control plane listens, how long leases last, and what Envoy exposes."""

    model_config = SettingsConfigDict(env_prefix="MESHLLM_CONTROLPLANE_", extra="ignore")

    port: int = 18000
    """gRPC port for RegistryService and ADS (Envoy's bootstrap points here)."""
    lease_ttl_seconds: float = 10.0
    """A replica that neither registers nor heartbeats for this long is dropped (the last
    of a pool stays an endpoint, see ReplicaRegistry). Replicas heartbeat every fifth of it
    from a thread of their own, so four heartbeats in a row must go missing: long enough
    for a saturated 2-core host, where a busy process can go unscheduled for seconds. A dead
    replica leaves Envoy's balancing well before, by its failed health checks."""
    eds_grace_seconds: float | None = None
    """After a start, Envoys that already hold a config get no push for this long, so
    replicas can re-register before Envoy hears of an empty pool (docs/architecture.md).
    None means half a lease TTL: two heartbeat intervals plus the replicas' reconnect
    back-off (at most 1 s)."""
    stall_forgiven_after_seconds: float = 1.0
    """A stall of the control plane's own loop longer than this extends every lease by the
    excess instead of expiring them all at once when it wakes (StallForgivingClock)."""
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
    keepalive_interval_seconds: float = 10.0
    keepalive_timeout_seconds: float = 20.0
    """Envoy PINGs every HTTP/2 connection (listeners and clusters) this often and drops it
    when no answer comes within the timeout: a vanished peer is noticed within half a
    minute, not at the stream idle timeout. Not shorter: a dropped connection takes every
    stream on it, and a live peer on a saturated host can take seconds to answer a PING."""
    health_check_interval_seconds: float = 2.0
    health_check_timeout_seconds: float = 5.0
    """Envoy's grpc.health.v1 checks of every replica (see resources.health_check)."""
    auth_timeout_seconds: float = 1.0
    """How long Envoy waits for the auth service's ext_authz check and rate-limit answer
    before failing the call closed (UNAVAILABLE). Auth answers both from its key cache and
    its counters in about a millisecond, but a burst queues: on 2 cores at twice the load
    one vLLM replica admits (tests/e2e/test_overload.py), a burst of 64 new calls left ~60 of
    them unanswered after 250 ms, none after 1 s."""
    open_tenant: str = ""
    """Empty (the default): every public call needs an API key — ext_authz and the per-tenant
    rate limit run on it. A tenant id: public inference calls need no key, carry no policy
    limits and are all that tenant's (the ledger still records them); the admin API still
    needs an admin key. For a private single-tenant endpoint, or to measure auth's own cost
    (make bench); never on a shared endpoint."""
    open_tenant_policy: str = ""
    """With an open tenant: its policy, as JSON of meshllm.auth.v1.Policy fields (e.g.
    '{"moderation": {"output_disabled": true}}'); empty is the default policy."""

    scaling_config: str = ""
    """The autoscaler's settings per service and pool (a TOML file); empty: the embedded
    services/controlplane/scaling.toml."""
    scaling_tick_seconds: float = 0.5
    """How often the autoscaler samples demand and decides."""
    autoscaling: bool = False
    """Whether something acts on the autoscaler's decisions (the local supervisor of `make
    up`, or KEDA): only then are pools at zero reported, so that routers hold calls for them
    while a replica starts. Decisions are computed and shown either way."""

    discovery: Literal["registration", "endpointslices"] = "registration"
    """Where replicas come from: their own registration (`make up`), or also the
    EndpointSlices of Services labelled for discovery (Kubernetes; deploy/k8s). Replicas
    register either way: their heartbeats carry the demand the autoscaler scales on."""
    discovery_namespace: str = ""
    """With endpointslices: the namespace to watch."""

    @property
    def eds_grace(self) -> float:
        if self.eds_grace_seconds is None:
            return self.lease_ttl_seconds / 2
        return self.eds_grace_seconds

    def envoy_layout(self) -> EnvoyLayout:
        return EnvoyLayout(
            listen_host=self.listen_host,
            public_port=self.public_port,
            mesh_port=self.mesh_port,
            stream_idle_timeout_seconds=self.stream_idle_timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            keepalive_interval_seconds=self.keepalive_interval_seconds,
            keepalive_timeout_seconds=self.keepalive_timeout_seconds,
            health_check_interval_seconds=self.health_check_interval_seconds,
            health_check_timeout_seconds=self.health_check_timeout_seconds,
            auth_timeout_seconds=self.auth_timeout_seconds,
            open_tenant=self.open_tenant,
            open_tenant_policy=_policy_bytes(self.open_tenant_policy),
        )


def _policy_bytes(policy_json: str) -> bytes:
    if not policy_json:
        return b""
    return json_format.Parse(policy_json, auth_pb2.Policy()).SerializeToString()
