"""The control plane's objects, wired once: registry, publisher, cache and ADS on one server."""
import asyncio

from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import Counter

from meshllm.api.controlplane.v1 import registry_pb2_grpc, scaling_pb2_grpc
from meshllm.api.externalscaler import externalscaler_pb2_grpc
from meshllm.logging import get_logger
from meshllm.server import MeshServer
from meshllm.tasks import cancel_and_wait
from services.controlplane.ads import AdsCallbacks
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.endpointslices import (EndpointSliceDiscovery, EndpointSliceWatch,
                                                  KubernetesSlices)
from services.controlplane.keda_scaler import KedaExternalScaler
from services.controlplane.lease_clock import StallForgivingClock
from services.controlplane.publisher import SnapshotPublisher
from services.controlplane.registry import GENERATION_SERVICE, ReplicaRegistry
from services.controlplane.scaling import MeshScaling
from services.controlplane.scaling_config import load_scaling_config
from services.controlplane.scaling_service import ScalingServicer
from services.controlplane.server import AggregatedDiscoveryServicer, RegistryServicer
from services.controlplane.snapshot import SnapshotCache, build_snapshot

log = get_logger(__name__)
STALL_SECONDS = Counter(
    "meshllm_controlplane_stall_seconds",
    "Time the control plane went unscheduled past its stall threshold; every lease was "
    "extended by it",
)


def _log_stall(leases_extended_seconds: float) -> None:
    STALL_SECONDS.inc(leases_extended_seconds)
    log.warning("controlplane_stalled", leases_extended_seconds=round(leases_extended_seconds, 3),
                note="the loop went unread this long past the stall threshold; every lease "
                     "was extended by it rather than expired")


class ControlPlane:
    """One running control plane. `start` serves; `stop` drains and stops publishing."""

    def __init__(self, settings: ControlPlaneSettings, callbacks: AdsCallbacks | None = None):
        self.settings = settings
        layout = settings.envoy_layout()
        self.registry = ReplicaRegistry(
            lease_ttl=settings.lease_ttl_seconds,
            clock=StallForgivingClock(settings.stall_forgiven_after_seconds, on_stall=_log_stall))
        self.cache = SnapshotCache()
        scaling_config = load_scaling_config(settings.scaling_config or None)
        # A pool named in the scaling settings has its cluster before its first replica: a
        # cluster Envoy first hears of when a replica registers stays warming until its first
        # health check answers, and calls routed to it meanwhile fail (seen as UNAVAILABLE
        # with no message for the first call after a cold start of vLLM).
        configured = [(GENERATION_SERVICE, model) for model in scaling_config.pools]
        self.publisher = SnapshotPublisher(
            self.registry, self.cache,
            build=lambda replicas, seen: build_snapshot(replicas, layout, [*configured, *seen]))
        self.scaling = MeshScaling(self.registry, scaling_config)
        self.server = MeshServer(settings, service="controlplane")
        self.server.add_service(registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                                RegistryServicer(self.registry, self.scaling,
                                                 report_pools_at_zero=settings.autoscaling),
                                "meshllm.controlplane.v1.RegistryService")
        self.server.add_service(scaling_pb2_grpc.add_ScalingServiceServicer_to_server,
                                ScalingServicer(self.scaling),
                                "meshllm.controlplane.v1.ScalingService")
        # KEDA asks this on Kubernetes (deploy/k8s): when a pool is active, and its demand.
        self.server.add_service(externalscaler_pb2_grpc.add_ExternalScalerServicer_to_server,
                                KedaExternalScaler(self.scaling, settings.scaling_tick_seconds),
                                "externalscaler.ExternalScaler")
        self.server.add_service(ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server,
                                AggregatedDiscoveryServicer(self.cache, callbacks),
                                "envoy.service.discovery.v3.AggregatedDiscoveryService")
        self._publishing: asyncio.Task | None = None
        self._scaling: asyncio.Task | None = None
        self._discovering: asyncio.Task | None = None

    async def start(self) -> int:
        """Serves and returns the bound port; the re-registration grace starts now."""
        self.cache.hold_until = asyncio.get_running_loop().time() + self.settings.eds_grace
        self._publishing = asyncio.create_task(self.publisher.run(), name="snapshot-publisher")
        self._scaling = asyncio.create_task(self._scale_forever(), name="autoscaler")
        if self.settings.discovery == "endpointslices":
            watch = EndpointSliceWatch(
                EndpointSliceDiscovery(self.registry),
                KubernetesSlices(self.settings.discovery_namespace),
                renew_seconds=self.settings.lease_ttl_seconds / 5)
            self._discovering = asyncio.create_task(watch.run(), name="endpointslices")
        return await self.server.start()

    async def _scale_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scaling_tick_seconds)
            try:
                self.scaling.tick()
            except Exception:  # a bad decision must not stop the next ones
                log.exception("scaling_tick_failed")

    async def stop(self) -> None:
        # ADS streams never end by themselves; Envoy keeps its last config and reconnects,
        # so waiting the full drain grace for them would only delay the exit.
        await self.server.drain(grace_seconds=min(self.settings.drain_grace_seconds, 1.0))
        for task in (self._publishing, self._scaling, self._discovering):
            if task is not None:
                await cancel_and_wait(task)
