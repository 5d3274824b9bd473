"""A control plane's scaling state without a control plane: a real ReplicaRegistry and
MeshScaling on a hand-driven clock, with a pool that scales to zero (tests of MeshScaling and
of what KEDA is told from it)."""
from services.controlplane.autoscaling import ScalingSettings
from services.controlplane.registry import ReplicaRegistry
from services.controlplane.scaling import MeshScaling
from services.controlplane.scaling_config import ScalingConfig
from tests.fake_clock import FakeClock

POOL = ScalingSettings(min_replicas=0, max_replicas=3, target_concurrency=4,
                       stable_window_seconds=10, panic_window_seconds=2,
                       scale_down_delay_seconds=0, idle_timeout_seconds=5)
"""Every generation pool's settings: to zero after 5 s idle, 4 calls a replica."""


def mesh_scaling(registry: ReplicaRegistry, clock: FakeClock, services: ScalingSettings,
                 named_pools: tuple[str, ...]) -> MeshScaling:
    """MeshScaling over `registry`: `services` for every service, POOL for every pool, and
    `named_pools` known (at zero) before any replica registers."""
    config = ScalingConfig(service_defaults=services, services={}, pool_defaults=POOL,
                           pools={name: POOL for name in named_pools})
    return MeshScaling(registry, config, clock=clock)
