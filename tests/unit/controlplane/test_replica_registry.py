import pytest

from services.controlplane.registry import InvalidReplica, Replica, ReplicaRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(replica_id="r1", service="generation", port=5001, model="tiny", **kw) -> Replica:
    return Replica(replica_id=replica_id, service=service, host="127.0.0.1", port=port,
                   model=model, **kw)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def registry(clock):
    return ReplicaRegistry(lease_ttl=3.0, clock=clock)


def test_register_returns_the_lease_ttl_and_lists_the_replica(registry):
    assert registry.register(replica()) == 3.0
    assert [r.replica_id for r in registry.live()] == ["r1"]


def test_a_lease_expires_after_its_ttl_without_heartbeat(registry, clock):
    registry.register(replica())
    clock.now += 2.9
    assert registry.live()
    clock.now += 0.2
    assert registry.live() == []
    assert [r.replica_id for r in registry.expire()] == ["r1"]


def test_heartbeat_renews_a_live_lease(registry, clock):
    registry.register(replica())
    clock.now += 2.5
    assert registry.heartbeat("r1")
    clock.now += 2.5
    assert [r.replica_id for r in registry.live()] == ["r1"]


def test_heartbeat_after_expiry_is_refused_so_the_replica_registers_again(registry, clock):
    registry.register(replica())
    clock.now += 3.0
    assert not registry.heartbeat("r1")
    assert not registry.heartbeat("never-registered")
    registry.register(replica())
    assert registry.heartbeat("r1")


def test_register_again_renews_and_updates_the_replica(registry, clock):
    registry.register(replica(port=5001))
    clock.now += 2.0
    registry.register(replica(port=5002))
    clock.now += 2.0
    assert [r.port for r in registry.live()] == [5002]


def test_deregister_removes_at_once_and_is_false_when_unknown(registry):
    registry.register(replica())
    assert registry.deregister("r1")
    assert registry.live() == []
    assert not registry.deregister("r1")


def test_list_filters_by_service_and_model(registry):
    registry.register(replica("g1", model="a"))
    registry.register(replica("g2", model="b"))
    registry.register(replica("rt", service="router", model=""))
    assert [r.replica_id for r in registry.live(service="generation")] == ["g1", "g2"]
    assert [r.replica_id for r in registry.live(model="b")] == ["g2"]
    assert [r.replica_id for r in registry.live(service="router")] == ["rt"]


def test_subscribers_hear_registration_expiry_and_deregistration_but_not_heartbeats(
        registry, clock):
    changes = []
    registry.subscribe(lambda: changes.append(len(registry.live())))
    registry.register(replica("r1"))
    registry.register(replica("r2", port=5002))
    registry.register(replica("r1"))          # a plain renewal changes nothing
    registry.heartbeat("r1")
    registry.deregister("r2")
    clock.now += 5
    registry.expire()
    assert changes == [1, 2, 1, 0]


def test_next_expiry_tracks_the_soonest_lease(registry, clock):
    assert registry.seconds_until_next_expiry() is None
    registry.register(replica("r1"))
    clock.now += 1
    registry.register(replica("r2", port=5002))
    assert registry.seconds_until_next_expiry() == pytest.approx(2.0)


def test_pools_outlive_their_last_replica(registry):
    registry.register(replica("g1", model="a"))
    registry.register(replica("rt", service="router", model="ignored-for-non-generation"))
    registry.deregister("g1")
    assert registry.pools_seen() == [("generation", "a"), ("router", "")]


@pytest.mark.parametrize(("bad", "field"), [
    (replica(replica_id=""), "replica.replica_id"),
    (replica(service=""), "replica.service"),
    (replica(service="Bad.Name"), "replica.service"),
    (Replica(replica_id="r", service="router", host="", port=1), "replica.host"),
    (replica(port=0), "replica.port"),
    (replica(model=""), "replica.model"),
    (replica(model="tiny\n"), "replica.model"),
])
def test_invalid_registrations_name_the_field(registry, bad, field):
    with pytest.raises(InvalidReplica) as raised:
        registry.register(bad)
    assert raised.value.field == field
    assert registry.live() == []
