"""Snapshots: one consistent set of Envoy resources, and the cache that holds the latest.

A snapshot is consistent: every route's cluster is in it. Each resource type carries its own
version, a hash of its content, so a stream sends a type only when that type changed (an
endpoint change sends EDS, and RDS too when a pool's size changes its routes' retry count)
and a restarted control plane that builds the same config reports the same versions.
"""
import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from services.controlplane import listeners, resources, routes
from services.controlplane.registry import (
    AUTH_SERVICE, GENERATION_SERVICE, MODERATION_SERVICE, RETRIEVAL_SERVICE, ROUTER_SERVICE,
    Replica,
)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Make-before-break: clusters and their endpoints before the listeners and routes using them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Pools whose clusters the listeners always use: the public routes go to the router, to auth,
# to moderation's audit API and to retrieval, ext_authz and the rate limit filter call auth,
# the mesh routes auth's usage API, moderation (before its first replica: UNAVAILABLE, which
# the router fails closed or open by the tenant's policy) and retrieval.
ALWAYS_PRESENT_POOLS = ((ROUTER_SERVICE, ""), (AUTH_SERVICE, ""), (MODERATION_SERVICE, ""),
                        (RETRIEVAL_SERVICE, ""))
# Services whose mesh routes are their own (routes.mesh_routes), not `/meshllm.<service>.v1.`:
# generation by model, auth only for its usage API, moderation only for its ModerationService
# (its audit API is public, for admin keys), the router none (its API is public).
_OWN_MESH_ROUTES = (GENERATION_SERVICE, ROUTER_SERVICE, AUTH_SERVICE, MODERATION_SERVICE)


@dataclass(frozen=True)
class Resources:
    """One type's resources by name, and the version of exactly this content."""

    version: str
    by_name: Mapping[str, Message]

    @classmethod
    def of(cls, messages: Iterable[Message], name: Callable[[Message], str]) -> "Resources":
        by_name = {name(m): m for m in messages}
        digest = hashlib.sha256()
        for key in sorted(by_name):
            digest.update(key.encode() + b"\0")
            digest.update(by_name[key].SerializeToString(deterministic=True))
        return cls(version=digest.hexdigest()[:16], by_name=by_name)


@dataclass(frozen=True)
class Snapshot:
    """Every resource Envoy gets, by type URL."""

    resources: Mapping[str, Resources]

    @property
    def version(self) -> str:
        """One version for the whole snapshot (for logs)."""
        return ".".join(self.resources[t].version[:6] for t in PUSH_ORDER)

    def of_type(self, type_url: str) -> Resources:
        return self.resources.get(type_url, Resources(version="", by_name={}))


def make_snapshot(clusters, load_assignments, listeners, routes) -> Snapshot:
    return Snapshot(resources={
        CLUSTER: Resources.of(clusters, lambda m: m.name),
        ENDPOINT: Resources.of(load_assignments, lambda m: m.cluster_name),
        LISTENER: Resources.of(listeners, lambda m: m.name),
        ROUTE: Resources.of(routes, lambda m: m.name),
    })


def _cluster_of(pool: tuple[str, str]) -> str:
    service, model = pool
    if service == GENERATION_SERVICE:
        return resources.generation_cluster_name(model)
    return resources.service_cluster_name(service)


def build_snapshot(replicas: Iterable[Replica], layout: resources.EnvoyLayout,
                   pools_seen: Iterable[tuple[str, str]] = ()) -> Snapshot:
    """The snapshot for these replicas (the registry's `routable()` ones).

    A pool (service, model) in `pools_seen` keeps its cluster and routes with no endpoints,
    so a pool scaled to zero still routes (to "no healthy upstream") rather than vanishing,
    and its first replica after a cold start joins a cluster Envoy already has warm.
    The router's and auth's clusters always exist, empty before their first replica, because
    the listeners use them from the start: Envoy serves at once, and until auth registers,
    every public call fails closed (UNAVAILABLE). Once a pool had replicas, the registry keeps
    its last ones as endpoints when their leases lapse, for these pools as for any other. The
    router gets no mesh route: its API (meshllm.inference.v1) is public, and a route for
    `/meshllm.router.v1.` would match nothing.
    """
    replicas = list(replicas)
    pools = dict.fromkeys([*ALWAYS_PRESENT_POOLS, *pools_seen, *(r.pool for r in replicas)])
    endpoints: dict[str, list[resources.Endpoint]] = {_cluster_of(p): [] for p in pools}
    for replica in replicas:
        endpoints[_cluster_of(replica.pool)].append(
            resources.Endpoint(replica.host, replica.port, hostname=replica.replica_id))
    pool_sizes = {model: len(endpoints[_cluster_of((service, model))])
                  for service, model in sorted(pools) if service == GENERATION_SERVICE}
    services = sorted({service for service, _ in pools if service not in _OWN_MESH_ROUTES})
    # Only generation replicas are leaves: every other service may pass on a status that a
    # service it calls answered, so its cluster ejects on local-origin failures alone.
    clusters = [resources.cluster(_cluster_of(pool), layout,
                                  local_origin_only=pool[0] != GENERATION_SERVICE)
                for pool in pools]
    return make_snapshot(
        clusters=clusters,
        load_assignments=[resources.load_assignment(name, eps) for name, eps in endpoints.items()],
        listeners=listeners.listeners(layout),
        routes=[routes.public_routes(layout.open_tenant),
                routes.mesh_routes(pool_sizes, services)],
    )


class SnapshotCache:
    """Holds the latest snapshot and wakes every watching ADS stream when it changes.

    `hold_until` is a loop time before which Envoys that already hold a config get no push
    (the re-registration grace after a control plane start: a restarted control plane starts
    empty, and pushing at once would take every endpoint away from Envoy).
    """

    def __init__(self, hold_until: float = 0.0, clock: Callable[[], float] | None = None):
        self._snapshot: Snapshot | None = None
        self._watchers: set[asyncio.Event] = set()
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.hold_until = hold_until

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def holding(self) -> bool:
        """True during the grace period after a start."""
        return self._clock() < self.hold_until

    def seconds_until_release(self) -> float:
        return max(0.0, self.hold_until - self._clock())

    def set(self, snapshot: Snapshot) -> None:
        """Publishes a snapshot; every watcher wakes and sends the types that changed."""
        self._snapshot = snapshot
        for event in self._watchers:
            event.set()

    def watch(self) -> asyncio.Event:
        """An event set on every new snapshot; pass it back to `unwatch` when done."""
        event = asyncio.Event()
        self._watchers.add(event)
        return event

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)
