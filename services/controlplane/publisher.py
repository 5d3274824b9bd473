"""Turns registry changes into snapshots: rebuild at once on a change, expire leases on time."""
import asyncio
from collections.abc import Callable

from prometheus_client import Counter

from meshllm.logging import get_logger
from services.controlplane.registry import Replica, ReplicaRegistry
from services.controlplane.snapshot import Snapshot, SnapshotCache

log = get_logger(__name__)

SnapshotBuilder = Callable[[list[Replica], list[tuple[str, str]]], Snapshot]
LEASES_EXPIRED = Counter(
    "meshllm_controlplane_leases_expired",
    "Leases that ran out without a heartbeat, by service; kept=true: the replica stayed an "
    "endpoint as the last of its pool",
    ["service", "kept"],
)


class SnapshotPublisher:
    """Keeps the cache's snapshot equal to build(routable replicas, pools seen).

    Changes are coalesced: many registrations in one loop turn give one snapshot. `build` is
    replaceable (tests inject a bad resource this way to watch Envoy NACK it).

    `run` wakes at least every `tick` seconds even with nothing to do: the registry's clock
    (StallForgivingClock) tells a stall of the control plane from time passing by how long
    it went unread, so it must be read often.
    """

    def __init__(self, registry: ReplicaRegistry, cache: SnapshotCache, build: SnapshotBuilder,
                 tick: float = 0.25):
        self.registry = registry
        self.cache = cache
        self.build = build
        self.tick = tick
        self._dirty = asyncio.Event()
        registry.subscribe(self._dirty.set)

    def publish(self) -> Snapshot:
        replicas = self.registry.routable()
        snapshot = self.build(replicas, self.registry.pools_seen())
        if self.cache.snapshot is None or snapshot.version != self.cache.snapshot.version:
            log.info("snapshot_published", version=snapshot.version, replicas=len(replicas))
        self.cache.set(snapshot)
        return snapshot

    async def run(self) -> None:
        """Publishes now, then on every registry change and lease expiry, until cancelled."""
        self._publish_keeping_last_good()
        while True:
            next_expiry = self.registry.seconds_until_next_expiry()
            timeout = self.tick if next_expiry is None else min(self.tick, next_expiry)
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout)
            except TimeoutError:
                pass
            self._expire()
            if self._dirty.is_set():
                self._dirty.clear()
                self._publish_keeping_last_good()

    def _expire(self) -> None:
        expiry = self.registry.expire()
        for replica in expiry.dropped:
            LEASES_EXPIRED.labels(replica.service, "false").inc()
            log.warning("lease_expired", replica_id=replica.replica_id, service=replica.service,
                        kept_as_last_of_pool=False)
        for replica in expiry.kept:
            LEASES_EXPIRED.labels(replica.service, "true").inc()
            log.warning("lease_expired", replica_id=replica.replica_id, service=replica.service,
                        kept_as_last_of_pool=True,
                        note="stays an endpoint until its pool has a live replica or it "
                             "deregisters; Envoy's health checks decide if it gets calls")

    def _publish_keeping_last_good(self) -> None:
        """A failing build must not end the loop: Envoy keeps the last good snapshot, the
        error is logged, and the next registry change tries again."""
        try:
            self.publish()
        except Exception:
            log.exception("snapshot_build_failed")
