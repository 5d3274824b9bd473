"""The replica registry: leases renewed by heartbeat, expiry on an injectable clock."""
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

GENERATION_SERVICE = "generation"
ROUTER_SERVICE = "router"
AUTH_SERVICE = "auth"
MODERATION_SERVICE = "moderation"
RETRIEVAL_SERVICE = "retrieval"
# A service name becomes part of a gRPC path (`/meshllm.<service>.v1.`), so it must be a
# proto package segment.
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# A model name travels as a gRPC metadata value: printable ASCII.
_MODEL_NAME = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


class InvalidReplica(ValueError):
    """A registration that cannot be routed; the message says which field and why."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Replica:
    """One running instance of a service, as the registry keeps it."""

    replica_id: str
    service: str
    host: str
    port: int
    model: str = ""
    max_context_tokens: int = 0
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def pool(self) -> tuple[str, str]:
        """(service, model): the replicas that Envoy balances over as one cluster."""
        return (self.service, self.model if self.service == GENERATION_SERVICE else "")


def validate(replica: Replica) -> None:
    """Raises InvalidReplica with a message a person can act on."""
    if not replica.replica_id:
        raise InvalidReplica("replica.replica_id is required", "replica.replica_id")
    if not replica.service:
        raise InvalidReplica("replica.service is required, e.g. \"generation\"", "replica.service")
    if not _SERVICE_NAME.fullmatch(replica.service):
        raise InvalidReplica(
            f"replica.service must match {_SERVICE_NAME.pattern} (it names the proto package "
            f"meshllm.<service>.v1), got {replica.service!r}", "replica.service")
    if not replica.host:
        raise InvalidReplica("replica.host is required", "replica.host")
    if not 0 < replica.port < 65536:
        raise InvalidReplica(
            f"replica.port must be between 1 and 65535, got {replica.port}", "replica.port")
    if replica.service == GENERATION_SERVICE and not replica.model:
        raise InvalidReplica("replica.model is required for generation replicas", "replica.model")
    if replica.model and not _MODEL_NAME.fullmatch(replica.model):
        raise InvalidReplica(
            "replica.model must be printable ASCII without surrounding spaces (callers send it "
            f"as the x-meshllm-model metadata value), got {replica.model!r}", "replica.model")


@dataclass
class _Lease:
    replica: Replica
    expires_at: float
    lapsed: bool = False
    """Ran out while no replica of its pool was live: kept as an endpoint (see `routable`)."""


@dataclass(frozen=True)
class Expiry:
    """What one `expire()` did."""

    dropped: list[Replica] = field(default_factory=list)
    """Gone from the endpoints: their lease ran out and their pool has a live replica."""
    kept: list[Replica] = field(default_factory=list)
    """Ran out just now but stay endpoints: no replica of their pool is live."""


class ReplicaRegistry:
    """Replicas by id. Every change to what Envoy routes to calls the subscribers, at once.

    Leases are checked against `clock` on every read, and `expire()` drops the ones that ran
    out (SnapshotPublisher calls it when `seconds_until_next_expiry()` says). A missed
    heartbeat alone never empties a pool: when every lease of a pool has run out, its
    replicas stay endpoints (`routable`) until one of the pool registers again or they
    deregister; Envoy's health checks decide meanwhile whether they get calls. Pools
    (service, model) once seen are remembered, so their Envoy clusters outlive their last
    replica.
    """

    def __init__(self, lease_ttl: float, clock: Callable[[], float] = time.monotonic):
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._pools_seen: dict[tuple[str, str], None] = {}
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def register(self, replica: Replica) -> float:
        """Adds the replica or renews (and updates) it; returns the lease TTL."""
        validate(replica)
        before = self.routable()
        self._leases[replica.replica_id] = _Lease(replica, self._clock() + self.lease_ttl)
        self._pools_seen.setdefault(replica.pool)
        if self.routable() != before:
            self._notify()
        return self.lease_ttl

    def heartbeat(self, replica_id: str) -> bool:
        """Renews a lease that has not run out; False when the id is unknown or its lease
        ran out (the replica then registers again)."""
        lease = self._leases.get(replica_id)
        if lease is None or self._expired(lease):
            return False
        lease.expires_at = self._clock() + self.lease_ttl
        return True

    def deregister(self, replica_id: str) -> bool:
        """Removes a replica at once, the last of its pool too; False when it was not there."""
        if self._leases.pop(replica_id, None) is None:
            return False
        self._notify()
        return True

    def expire(self) -> Expiry:
        """Drops the leases that ran out, except a pool's last ones (see the class)."""
        live_pools = self._live_pools()
        expiry = Expiry()
        for replica_id, lease in list(self._leases.items()):
            if not self._expired(lease):
                continue
            if lease.replica.pool in live_pools:
                del self._leases[replica_id]
                expiry.dropped.append(lease.replica)
            elif not lease.lapsed:
                lease.lapsed = True
                expiry.kept.append(lease.replica)
        if expiry.dropped:
            self._notify()
        return expiry

    def seconds_until_next_expiry(self) -> float | None:
        """How long until the next lease runs out (0 when one did and `expire()` is due);
        None when no lease is running."""
        soonest = min((lease.expires_at for lease in self._leases.values() if not lease.lapsed),
                      default=None)
        return None if soonest is None else max(0.0, soonest - self._clock())

    def live(self, service: str = "", model: str = "") -> list[Replica]:
        """Replicas whose lease runs, in registration order, optionally of one service and/or
        model."""
        return [lease.replica for lease in self._leases.values()
                if not self._expired(lease) and _matches(lease.replica, service, model)]

    def routable(self, service: str = "", model: str = "") -> list[Replica]:
        """What Envoy balances over: the live replicas, plus every replica of a pool that has
        none live (its leases ran out, and no heartbeat alone takes a pool's last endpoint
        away). In registration order, optionally of one service and/or model."""
        live_pools = self._live_pools()
        return [lease.replica for lease in self._leases.values()
                if (not self._expired(lease) or lease.replica.pool not in live_pools)
                and _matches(lease.replica, service, model)]

    def pools_seen(self) -> list[tuple[str, str]]:
        """Every (service, model) that ever had a replica, in first-seen order."""
        return list(self._pools_seen)

    def _live_pools(self) -> set[tuple[str, str]]:
        return {lease.replica.pool for lease in self._leases.values() if not self._expired(lease)}

    def _expired(self, lease: _Lease) -> bool:
        return self._clock() >= lease.expires_at

    def _notify(self) -> None:
        for callback in self._subscribers:
            callback()


def _matches(replica: Replica, service: str, model: str) -> bool:
    return (not service or replica.service == service) and (not model or replica.model == model)
