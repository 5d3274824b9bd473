"""The autoscaler's view of the mesh: one Autoscaler per scaled unit (a service, or a
generation pool), fed by the demand replicas report with their heartbeats.

Demand is what Knative scales on: calls in flight on a unit's replicas, plus, for a pool,
the calls routers hold because it has no replica (a pool at zero has nobody else to report
for it). `tick` samples it and asks each unit's Autoscaler what it wants; whoever runs the
replicas (the local supervisor, or KEDA on Kubernetes) reads the answer from
ScalingService. A decision that changes a unit's count is logged with its inputs."""
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meshllm.logging import get_logger
from services.controlplane.autoscaling import Autoscaler, Decision, ScalingSettings
from services.controlplane.registry import GENERATION_SERVICE, ReplicaRegistry
from services.controlplane.scaling_config import ScalingConfig

log = get_logger(__name__)
Unit = tuple[str, str]
"""(service, pool): the pool is the model for generation, "" for every other service."""


@dataclass
class Demand:
    """What one replica said with its last heartbeat."""

    in_flight: int = 0
    held: Mapping[str, int] = field(default_factory=dict)


@dataclass
class UnitState:
    settings: ScalingSettings
    autoscaler: Autoscaler
    desired: int
    decision: Decision | None = None
    decided_at: float = 0.0
    """Wall-clock time of `decision`, for people reading the status."""
    in_flight: int = 0
    held: int = 0
    ready: int = 0


class MeshScaling:
    """Every unit's Autoscaler, the demand reports, and pins."""

    def __init__(self, registry: ReplicaRegistry, config: ScalingConfig,
                 clock: Callable[[], float] = time.monotonic):
        self._registry = registry
        self._config = config
        self._clock = clock
        self._demand: dict[str, Demand] = {}
        self._units: dict[Unit, UnitState] = {}
        for model in config.pools:
            self._unit((GENERATION_SERVICE, model), clock())

    def report(self, replica_id: str, in_flight: int, held: Mapping[str, int]) -> None:
        self._demand[replica_id] = Demand(max(0, in_flight),
                                          {model: n for model, n in held.items() if n > 0})
        for model in self._demand[replica_id].held:
            self._unit((GENERATION_SERVICE, model), self._clock())  # a held call makes it known

    def tick(self) -> None:
        """Samples every unit's demand and asks its Autoscaler for a count."""
        now = self._clock()
        for pool in self._registry.pools_seen():
            self._unit(pool, now)
        live = self._registry.live()
        live_ids = {replica.replica_id for replica in live}
        for replica_id in [r for r in self._demand if r not in live_ids]:
            del self._demand[replica_id]  # a gone replica's demand is no one's
        for key, unit in self._units.items():
            replicas = [r for r in live if r.pool == key]
            unit.ready = len(replicas)
            unit.in_flight = sum(self._demand.get(r.replica_id, Demand()).in_flight
                                 for r in replicas)
            unit.held = sum(demand.held.get(key[1], 0) for demand in self._demand.values()) \
                if key[0] == GENERATION_SERVICE else 0
            unit.autoscaler.observe(unit.in_flight + unit.held, now)
            decision = unit.autoscaler.decide(unit.ready, now)
            if unit.decision is None or decision.desired != unit.desired \
                    or decision.panic != unit.decision.panic:
                log.info("scaling_decision", service=key[0], pool=key[1],
                         replicas_from=unit.desired, replicas_to=decision.desired,
                         reason=decision.reason, panic=decision.panic, ready=unit.ready,
                         in_flight=unit.in_flight, held=unit.held,
                         stable_concurrency=round(decision.stable_concurrency, 2),
                         panic_concurrency=round(decision.panic_concurrency, 2))
                unit.decision, unit.decided_at = decision, time.time()
            unit.desired = decision.desired

    def pin(self, service: str, pool: str, replicas: int | None) -> Unit:
        """Pins a unit's count (None gives it back to the autoscaler); KeyError if unknown."""
        key = self.find(service, pool)
        self._units[key].autoscaler.pin(replicas)
        log.info("scaling_pinned", service=service, pool=key[1], replicas=replicas)
        self.tick()
        return key

    def find(self, service: str, pool: str) -> Unit:
        """The unit named; an empty pool of generation picks its only pool."""
        if service == GENERATION_SERVICE and not pool:
            pools = [key for key in self._units if key[0] == GENERATION_SERVICE]
            if len(pools) == 1:
                return pools[0]
        key = (service, pool)
        if key not in self._units:
            raise KeyError(key)
        return key

    def units(self) -> dict[Unit, UnitState]:
        return dict(self._units)

    def models_at_zero(self) -> list[str]:
        """Generation pools with no replica Envoy could route to: a call for one is held
        while one starts. Read from the registry now, not from the last tick, so that a pool
        whose last replica just deregistered is at zero at once (a router that finds no
        replica for it asks, and must not hear "neither")."""
        return sorted(pool for service, pool in self._units
                      if service == GENERATION_SERVICE
                      and not self._registry.routable(GENERATION_SERVICE, pool))

    def _unit(self, key: Unit, now: float) -> UnitState:
        if key not in self._units:
            service, pool = key
            settings = (self._config.for_pool(pool) if service == GENERATION_SERVICE
                        else self._config.for_service(service))
            self._units[key] = UnitState(settings, Autoscaler(settings, now),
                                         desired=settings.min_replicas)
        return self._units[key]
