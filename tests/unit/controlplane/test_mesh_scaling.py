"""MeshScaling: demand from heartbeats (in flight) and routers (held calls) reaches each unit's
autoscaler; pools at zero are the ones a held call may wait for."""
import pytest

from services.controlplane.autoscaling import ScalingSettings
from services.controlplane.registry import ReplicaRegistry
from tests.mesh_scaling import mesh_scaling
from tests.unit.controlplane.test_replica_registry import replica

ROUTER = ScalingSettings(min_replicas=1, max_replicas=2, target_concurrency=64,
                         stable_window_seconds=10, panic_window_seconds=2)


@pytest.fixture
def registry(clock):
    return ReplicaRegistry(lease_ttl=60, clock=clock)


@pytest.fixture
def scaling(registry, clock):
    return mesh_scaling(registry, clock, ROUTER, named_pools=("named",))


def run(scaling, clock, seconds: float, step: float = 0.5) -> None:
    for _ in range(int(seconds / step)):
        clock.now += step
        scaling.tick()


def test_a_configured_pool_is_known_at_zero_before_any_replica(scaling):
    scaling.tick()
    assert scaling.models_at_zero() == ["named"]
    assert scaling.units()[("generation", "named")].desired == 0


def test_in_flight_calls_reported_by_replicas_set_the_pool_count(scaling, registry, clock):
    registry.register(replica("g1", model="tiny"))
    registry.register(replica("r1", service="router", port=6001, model=""))
    scaling.report("g1", in_flight=10, held={})
    run(scaling, clock, 3)
    pool = scaling.units()[("generation", "tiny")]
    assert (pool.ready, pool.in_flight, pool.desired) == (1, 10, 3)  # ceil(10 / 4)
    assert "10.0 calls" in pool.decision.reason
    assert scaling.units()[("router", "")].desired == 1  # its min


def test_calls_held_by_a_router_start_a_pool_at_zero_at_once(scaling, registry, clock):
    registry.register(replica("r1", service="router", port=6001, model=""))
    scaling.report("r1", in_flight=1, held={"named": 2})
    scaling.tick()
    pool = scaling.units()[("generation", "named")]
    assert (pool.held, pool.desired) == (2, 1)
    assert "cold start" in pool.decision.reason


def test_an_idle_pool_goes_to_zero_after_its_idle_timeout_and_is_then_at_zero(
        scaling, registry, clock):
    registry.register(replica("g1", model="tiny"))
    scaling.report("g1", in_flight=1, held={})
    run(scaling, clock, 2)
    scaling.report("g1", in_flight=0, held={})
    run(scaling, clock, 4)
    assert scaling.units()[("generation", "tiny")].desired == 1  # idle 4 s < 5 s
    run(scaling, clock, 2)
    assert scaling.units()[("generation", "tiny")].desired == 0
    assert "tiny" not in scaling.models_at_zero()  # its replica still drains
    registry.deregister("g1")
    assert "tiny" in scaling.models_at_zero()  # at once, not from the next tick


def test_a_gone_replicas_demand_is_forgotten(scaling, registry, clock):
    registry.register(replica("g1", model="tiny"))
    scaling.report("g1", in_flight=12, held={})
    scaling.tick()
    registry.deregister("g1")
    scaling.tick()
    assert scaling.units()[("generation", "tiny")].in_flight == 0


def test_a_pin_overrides_the_autoscaler_and_an_unpin_gives_it_back(scaling, registry, clock):
    registry.register(replica("g1", model="tiny"))
    scaling.tick()
    scaling.pin("generation", "tiny", 3)
    pool = scaling.units()[("generation", "tiny")]
    assert pool.desired == 3 and pool.decision.reason.startswith("pinned at 3")
    scaling.pin("generation", "tiny", None)
    assert scaling.units()[("generation", "tiny")].desired == 1  # kept warm, not idle yet


def test_find_names_the_only_pool_and_refuses_an_unknown_or_ambiguous_unit(scaling, registry):
    assert scaling.find("generation", "") == ("generation", "named")
    with pytest.raises(KeyError):
        scaling.find("nosuch", "")
    registry.register(replica("g1", model="tiny"))
    scaling.tick()
    with pytest.raises(KeyError):
        scaling.find("generation", "")  # two pools: name one
