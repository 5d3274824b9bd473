"""Turns registry changes into snapshots: rebuild at once on a change, expire leases on time."""
import asyncio
from collections.abc import Callable

from meshllm.logging import get_logger
from services.controlplane.registry import Replica, ReplicaRegistry
from services.controlplane.snapshot import Snapshot, SnapshotCache

log = get_logger(__name__)

SnapshotBuilder = Callable[[list[Replica], list[tuple[str, str]]], Snapshot]


class SnapshotPublisher:
    """Keeps the cache's snapshot equal to build(live replicas, pools seen).

    Changes are coalesced: many registrations in one loop turn give one snapshot. `build` is
    replaceable (tests inject a bad resource this way to watch Envoy NACK it).
    """

    def __init__(self, registry: ReplicaRegistry, cache: SnapshotCache, build: SnapshotBuilder):
        self.registry = registry
        self.cache = cache
        self.build = build
        self._dirty = asyncio.Event()
        registry.subscribe(self._dirty.set)

    def publish(self) -> Snapshot:
        snapshot = self.build(self.registry.live(), self.registry.pools_seen())
        if self.cache.snapshot is None or snapshot.version != self.cache.snapshot.version:
            log.info("snapshot_published", version=snapshot.version,
                     replicas=len(self.registry.live()))
        self.cache.set(snapshot)
        return snapshot

    async def run(self) -> None:
        """Publishes now, then on every registry change and lease expiry, until cancelled."""
        self._publish_keeping_last_good()
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(),
                                       self.registry.seconds_until_next_expiry())
            except TimeoutError:
                pass
            for replica in self.registry.expire():
                log.info("lease_expired", replica_id=replica.replica_id, service=replica.service)
            self._dirty.clear()
            self._publish_keeping_last_good()

    def _publish_keeping_last_good(self) -> None:
        """A failing build must not end the loop: Envoy keeps the last good snapshot, the
        error is logged, and the next registry change tries again."""
        try:
            self.publish()
        except Exception:
            log.exception("snapshot_build_failed")
