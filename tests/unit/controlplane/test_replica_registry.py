import pytest

from services.controlplane.lease_clock import StallForgivingClock
from services.controlplane.registry import Expiry, InvalidReplica, Replica, ReplicaRegistry


def replica(replica_id="r1", service="generation", port=5001, model="tiny", **kw) -> Replica:
    return Replica(replica_id=replica_id, service=service, host="127.0.0.1", port=port,
                   model=model, **kw)


@pytest.fixture
def registry(clock):
    return ReplicaRegistry(lease_ttl=3.0, clock=clock)


def test_register_returns_the_lease_ttl_and_lists_the_replica(registry):
    assert registry.register(replica()) == 3.0
    assert [r.replica_id for r in registry.live()] == ["r1"]


def test_a_lease_expires_after_its_ttl_without_heartbeat(registry, clock):
    registry.register(replica("r1"))
    registry.register(replica("r2", port=5002))
    clock.now += 2.5
    registry.heartbeat("r2")
    clock.now += 0.4
    assert [r.replica_id for r in registry.live()] == ["r1", "r2"]
    clock.now += 0.2
    assert [r.replica_id for r in registry.live()] == ["r2"]
    assert [r.replica_id for r in registry.expire().dropped] == ["r1"]
    assert [r.replica_id for r in registry.routable()] == ["r2"]


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


def test_subscribers_hear_changes_to_the_endpoints_but_not_heartbeats(registry, clock):
    changes = []
    registry.subscribe(lambda: changes.append(len(registry.routable())))
    registry.register(replica("r1"))
    registry.register(replica("r2", port=5002))
    registry.register(replica("r1"))          # a plain renewal changes nothing
    registry.heartbeat("r1")
    registry.deregister("r2")
    registry.register(replica("r3", port=5003))
    clock.now += 2
    registry.heartbeat("r3")
    clock.now += 2
    registry.expire()                         # r1 ran out; r3 of the same pool is live
    assert changes == [1, 2, 1, 2, 1]


def test_next_expiry_tracks_the_soonest_lease(registry, clock):
    assert registry.seconds_until_next_expiry() is None
    registry.register(replica("r1"))
    clock.now += 1
    registry.register(replica("r2", port=5002))
    assert registry.seconds_until_next_expiry() == pytest.approx(2.0)


def test_the_last_replica_of_a_pool_stays_an_endpoint_when_its_lease_runs_out(registry, clock):
    changes = []
    registry.register(replica("g1", model="a"))
    registry.register(replica("rt", service="router", model=""))
    registry.subscribe(lambda: changes.append(True))
    clock.now += 3.0
    expiry = registry.expire()
    assert expiry.dropped == [] and {r.replica_id for r in expiry.kept} == {"g1", "rt"}
    assert [r.replica_id for r in registry.routable()] == ["g1", "rt"]
    assert registry.live() == []
    assert changes == []                       # Envoy's endpoints did not change
    assert registry.seconds_until_next_expiry() is None  # nothing more to expire
    assert registry.expire() == Expiry()       # reported once


def test_every_replica_of_a_pool_whose_leases_all_ran_out_stays_an_endpoint(registry, clock):
    registry.register(replica("g1", port=5001))
    registry.register(replica("g2", port=5002))
    clock.now += 10
    assert len(registry.expire().kept) == 2
    assert [r.replica_id for r in registry.routable(service="generation")] == ["g1", "g2"]


def test_a_kept_replica_goes_once_its_pool_has_a_live_replica_again(registry, clock):
    registry.register(replica("g1", port=5001))
    registry.register(replica("g2", port=5002))
    clock.now += 3.0
    registry.expire()
    changes = []
    registry.subscribe(lambda: changes.append([r.replica_id for r in registry.routable()]))
    registry.register(replica("g3", port=5003))
    assert changes == [["g3"]]
    assert [r.replica_id for r in registry.expire().dropped] == ["g1", "g2"]


def test_a_kept_replica_that_registers_again_is_live_and_envoy_sees_no_change(registry, clock):
    registry.register(replica("g1"))
    clock.now += 3.0
    registry.expire()
    assert not registry.heartbeat("g1")        # the lease ran out: register again
    changes = []
    registry.subscribe(lambda: changes.append(True))
    registry.register(replica("g1"))
    assert changes == []
    assert [r.replica_id for r in registry.live()] == ["g1"]
    assert registry.seconds_until_next_expiry() == pytest.approx(3.0)


def test_deregistration_removes_even_the_last_replica_of_a_pool(registry, clock):
    registry.register(replica("g1"))
    clock.now += 3.0
    registry.expire()
    assert registry.deregister("g1")
    assert registry.routable() == []


def test_a_stall_of_the_control_plane_extends_leases_instead_of_expiring_them(clock):
    stalls = []
    registry = ReplicaRegistry(lease_ttl=3.0, clock=StallForgivingClock(
        max_step=1.0, clock=clock, on_stall=stalls.append))
    registry.register(replica("g1", port=5001))
    registry.register(replica("g2", port=5002))
    for _ in range(3):                         # read often: real time
        clock.now += 0.5
        registry.live()
    registry.heartbeat("g2")
    clock.now += 30.0                          # the control plane's loop did not run
    assert registry.expire() == Expiry()
    assert [r.replica_id for r in registry.live()] == ["g1", "g2"]
    assert stalls == [pytest.approx(29.0)]
    # The heartbeats that waited in the sockets meanwhile now renew the leases.
    assert registry.heartbeat("g1") and registry.heartbeat("g2")


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
