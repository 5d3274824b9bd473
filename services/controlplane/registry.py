"""The replica registry: leases renewed by heartbeat, expiry on an injectable clock."""
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

GENERATION_SERVICE = "generation"
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


class ReplicaRegistry:
    """Live replicas by id. Every change calls the subscribers, synchronously and at once.

    Leases are checked against `clock` on every read, and `expire()` drops the ones that ran
    out (SnapshotPublisher calls it when `seconds_until_next_expiry()` says). Pools
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
        known = self._leases.get(replica.replica_id)
        changed = known is None or known.replica != replica or self._expired(known)
        self._leases[replica.replica_id] = _Lease(replica, self._clock() + self.lease_ttl)
        self._pools_seen.setdefault(replica.pool)
        if changed:
            self._notify()
        return self.lease_ttl

    def heartbeat(self, replica_id: str) -> bool:
        """Renews a live lease; False when the id is unknown or its lease ran out."""
        lease = self._leases.get(replica_id)
        if lease is None or self._expired(lease):
            self.expire()
            return False
        lease.expires_at = self._clock() + self.lease_ttl
        return True

    def deregister(self, replica_id: str) -> bool:
        """Removes a replica at once; False when it was not registered."""
        if self._leases.pop(replica_id, None) is None:
            return False
        self._notify()
        return True

    def expire(self) -> list[Replica]:
        """Drops every lease that ran out and returns those replicas."""
        gone = [rid for rid, lease in self._leases.items() if self._expired(lease)]
        dropped = [self._leases.pop(rid).replica for rid in gone]
        if dropped:
            self._notify()
        return dropped

    def seconds_until_next_expiry(self) -> float | None:
        """How long until the next lease runs out; None with no replicas."""
        soonest = min((lease.expires_at for lease in self._leases.values()), default=None)
        return None if soonest is None else max(0.0, soonest - self._clock())

    def live(self, service: str = "", model: str = "") -> list[Replica]:
        """Live replicas in registration order, optionally of one service and/or model."""
        return [lease.replica for lease in self._leases.values()
                if not self._expired(lease)
                and (not service or lease.replica.service == service)
                and (not model or lease.replica.model == model)]

    def pools_seen(self) -> list[tuple[str, str]]:
        """Every (service, model) that ever had a replica, in first-seen order."""
        return list(self._pools_seen)

    def _expired(self, lease: _Lease) -> bool:
        return self._clock() >= lease.expires_at

    def _notify(self) -> None:
        for callback in self._subscribers:
            callback()
