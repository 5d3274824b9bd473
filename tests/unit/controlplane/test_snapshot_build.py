from envoy.config.endpoint.v3 import endpoint_pb2

from services.controlplane import resources
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.registry import Replica, ReplicaRegistry
from services.controlplane.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, build_snapshot

LAYOUT = resources.EnvoyLayout()


def gen(replica_id, model, port):
    return Replica(replica_id, "generation", "127.0.0.1", port, model=model)


def route_clusters(snapshot) -> set[str]:
    return {route.route.cluster
            for config in snapshot.of_type(ROUTE).by_name.values()
            for host in config.virtual_hosts for route in host.routes if route.HasField("route")}


def test_every_route_points_at_a_cluster_in_the_same_snapshot():
    snapshot = build_snapshot([gen("g1", "tiny", 1), Replica("r", "retrieval", "h", 2)], LAYOUT)
    assert route_clusters(snapshot) <= set(snapshot.of_type(CLUSTER).by_name)
    assert set(snapshot.of_type(ENDPOINT).by_name) == set(snapshot.of_type(CLUSTER).by_name)


def test_the_clusters_the_listeners_use_exist_empty_before_any_replica_registers():
    snapshot = build_snapshot([], LAYOUT)
    assert set(snapshot.of_type(CLUSTER).by_name) == {"router", "auth", "moderation", "retrieval"}
    assert all(not assignment.endpoints
               for assignment in snapshot.of_type(ENDPOINT).by_name.values())
    assert set(snapshot.of_type(LISTENER).by_name) == {"public", "mesh"}
    assert set(snapshot.of_type(ROUTE).by_name) == {"public", "mesh"}
    assert route_clusters(snapshot) <= set(snapshot.of_type(CLUSTER).by_name)


def test_auth_replicas_are_the_auth_clusters_endpoints_and_it_ejects_like_the_router():
    snapshot = build_snapshot([Replica("a1", "auth", "127.0.0.1", 7001),
                               Replica("a2", "auth", "127.0.0.1", 7002)], LAYOUT)
    assignment = snapshot.of_type(ENDPOINT).by_name["auth"]
    assert [e.endpoint.address.socket_address.port_value
            for e in assignment.endpoints[0].lb_endpoints] == [7001, 7002]
    auth = snapshot.of_type(CLUSTER).by_name["auth"]
    assert auth.outlier_detection == snapshot.of_type(CLUSTER).by_name["router"].outlier_detection
    assert auth.outlier_detection.enforcing_consecutive_5xx.value == 0


def test_auth_is_on_the_mesh_only_by_its_usage_api():
    snapshot = build_snapshot([Replica("a1", "auth", "h", 1), Replica("r", "retrieval", "h", 2)],
                              LAYOUT)
    mesh = snapshot.of_type(ROUTE).by_name["mesh"]
    prefixes = [route.match.prefix for route in mesh.virtual_hosts[0].routes]
    assert "/meshllm.auth.v1.UsageService/" in prefixes
    assert "/meshllm.auth.v1." not in prefixes
    assert "/meshllm.retrieval.v1." in prefixes


def test_replicas_of_one_model_share_its_cluster():
    snapshot = build_snapshot([gen("g1", "tiny", 1), gen("g2", "tiny", 2), gen("g3", "big", 3)],
                              LAYOUT)
    assignment: endpoint_pb2.ClusterLoadAssignment = snapshot.of_type(ENDPOINT).by_name[
        resources.generation_cluster_name("tiny")]
    ports = [e.endpoint.address.socket_address.port_value
             for e in assignment.endpoints[0].lb_endpoints]
    assert ports == [1, 2]


def test_a_pool_seen_before_keeps_its_cluster_and_route_with_no_endpoints():
    snapshot = build_snapshot([], LAYOUT, pools_seen=[("generation", "tiny")])
    name = resources.generation_cluster_name("tiny")
    assert name in snapshot.of_type(CLUSTER).by_name
    assert not snapshot.of_type(ENDPOINT).by_name[name].endpoints
    assert name in route_clusters(snapshot)


def test_versions_follow_content_per_type():
    one = build_snapshot([gen("g1", "tiny", 1)], LAYOUT)
    same = build_snapshot([gen("g1", "tiny", 1)], LAYOUT)
    moved = build_snapshot([gen("g1", "tiny", 2)], LAYOUT)
    assert one.version == same.version
    assert moved.of_type(ENDPOINT).version != one.of_type(ENDPOINT).version
    for type_url in (CLUSTER, LISTENER, ROUTE):
        assert moved.of_type(type_url).version == one.of_type(type_url).version


def test_the_router_gets_no_mesh_route_and_other_services_do():
    snapshot = build_snapshot([Replica("rt", "router", "h", 1), Replica("r", "retrieval", "h", 2)],
                              LAYOUT)
    mesh = snapshot.of_type(ROUTE).by_name["mesh"]
    prefixes = [route.match.prefix for route in mesh.virtual_hosts[0].routes]
    assert "/meshllm.retrieval.v1." in prefixes
    assert not any("router" in prefix for prefix in prefixes)
    assert "router" in route_clusters(snapshot)  # the public listener's


def test_generation_retries_follow_the_pool_size_and_only_the_router_ejects_on_local_errors():
    snapshot = build_snapshot([gen("g1", "tiny", 1), gen("g2", "tiny", 2), gen("g3", "tiny", 3),
                               Replica("rt", "router", "h", 9)], LAYOUT)
    (route,) = [r for r in snapshot.of_type(ROUTE).by_name["mesh"].virtual_hosts[0].routes
                if r.name == "generation/tiny"]
    assert route.route.retry_policy.num_retries.value == 2
    clusters = snapshot.of_type(CLUSTER).by_name
    assert clusters["router"].outlier_detection.enforcing_consecutive_5xx.value == 0
    generation = clusters[resources.generation_cluster_name("tiny")]
    assert generation.outlier_detection.enforcing_consecutive_gateway_failure.value == 100


def test_auths_last_replica_stays_its_endpoint_when_its_lease_runs_out_as_in_any_pool():
    now = [1000.0]
    registry = ReplicaRegistry(lease_ttl=3.0, clock=lambda: now[0])
    registry.register(Replica("a1", "auth", "127.0.0.1", 7001))
    now[0] += 10
    registry.expire()

    def auth_ports():
        snapshot = build_snapshot(registry.routable(), LAYOUT, registry.pools_seen())
        assignment = snapshot.of_type(ENDPOINT).by_name["auth"]
        return [e.endpoint.address.socket_address.port_value
                for locality in assignment.endpoints for e in locality.lb_endpoints]

    assert auth_ports() == [7001]
    registry.deregister("a1")  # a draining replica leaves at once, the last one too
    assert auth_ports() == []


async def test_a_pool_named_in_the_scaling_settings_has_its_cluster_before_its_first_replica(
        tmp_path):
    # Envoy keeps a cluster it first hears of warming until its first health check answers:
    # a pool at zero from the start must not get its cluster only when a replica comes up.
    config = tmp_path / "scaling.toml"
    config.write_text('[pools."tiny"]\nmin_replicas = 0\n')
    controlplane = ControlPlane(ControlPlaneSettings(port=0, metrics_port=-1,
                                                     scaling_config=str(config)))
    snapshot = controlplane.publisher.publish()
    cluster = resources.generation_cluster_name("tiny")
    assert cluster in snapshot.of_type(CLUSTER).by_name
    assert not snapshot.of_type(ENDPOINT).by_name[cluster].endpoints
