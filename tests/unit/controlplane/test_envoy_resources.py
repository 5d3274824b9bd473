from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2

from services.controlplane import resources
from services.controlplane.resources import EnvoyLayout, Endpoint

LAYOUT = EnvoyLayout(listen_host="127.0.0.1", public_port=18080, mesh_port=18081)


def test_cluster_is_accepted_by_envoy(envoy_validate):
    envoy_validate(clusters=[resources.cluster("router", LAYOUT),
                             resources.cluster(resources.generation_cluster_name("a/B"), LAYOUT)])


def test_cluster_speaks_http2_and_sets_limits_on_purpose():
    built = resources.cluster("router", LAYOUT)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        built.typed_extension_protocol_options)
    assert built.outlier_detection.max_ejection_percent.value == 100
    assert built.outlier_detection.split_external_local_origin_errors
    assert built.circuit_breakers.thresholds[0].max_requests.value == 10_000


def test_load_assignment_is_accepted_by_envoy(envoy_validate):
    assignment = resources.load_assignment(
        "static", [Endpoint("127.0.0.1", 5001, "r1"), Endpoint("127.0.0.1", 5002, "r2")])
    # A STATIC cluster carries a load assignment inline, so Envoy checks it here.
    holder = cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC,
                                 load_assignment=assignment)
    holder.connect_timeout.FromSeconds(1)
    envoy_validate(clusters=[holder])


def test_empty_load_assignment_is_accepted_by_envoy(envoy_validate):
    holder = cluster_pb2.Cluster(name="empty", type=cluster_pb2.Cluster.STATIC,
                                 load_assignment=resources.load_assignment("empty", []))
    holder.connect_timeout.FromSeconds(1)
    envoy_validate(clusters=[holder])


def test_public_listener_with_its_routes_is_accepted_by_envoy(envoy_validate):
    listener = resources.listener("public", LAYOUT.public_port, LAYOUT,
                                  route_config=resources.public_routes())
    envoy_validate(clusters=[resources.cluster("router", LAYOUT)], listeners=[listener])


def test_mesh_listener_with_its_routes_is_accepted_by_envoy(envoy_validate):
    models = ["tiny", "Qwen/Qwen2.5-0.5B-Instruct"]
    routes = resources.mesh_routes(models, ["router", "retrieval"])
    listener = resources.listener("mesh", LAYOUT.mesh_port, LAYOUT, route_config=routes)
    clusters = [resources.cluster(name, LAYOUT) for name in
                ["router", "retrieval", *map(resources.generation_cluster_name, models)]]
    envoy_validate(clusters=clusters, listeners=[listener])


def test_listeners_by_rds_over_ads_are_accepted_by_envoy(envoy_validate):
    envoy_validate(listeners=resources.listeners(LAYOUT))


def test_streaming_routes_leave_the_deadline_to_the_caller():
    for route in resources.mesh_routes(["tiny"], ["router"]).virtual_hosts[0].routes:
        if route.HasField("route"):
            assert route.route.timeout.ToNanoseconds() == 0
            assert route.route.max_stream_duration.HasField("grpc_timeout_header_max")
            assert route.route.max_stream_duration.grpc_timeout_header_max.ToNanoseconds() == 0
            assert route.route.retry_policy.retry_host_predicate[0].name == (
                "envoy.retry_host_predicates.previous_hosts")


def test_generation_cluster_names_are_safe_and_distinct_for_any_model():
    names = {resources.generation_cluster_name(m)
             for m in ["Org/M", "org-m", "org/m", "", "ü/🙂", "a" * 300]}
    assert len(names) == 6
    for name in names:
        assert name.startswith("generation.")
        assert len(name) < 70
        assert all(c.isascii() and (c.isalnum() or c in ".-") for c in name)


def test_the_layout_sets_where_listeners_bind():
    layout = EnvoyLayout(listen_host="0.0.0.0", public_port=1, mesh_port=2)
    addresses = {l.name: l.address.socket_address for l in resources.listeners(layout)}
    assert addresses["public"] == address_pb2.SocketAddress(address="0.0.0.0", port_value=1)
    assert addresses["mesh"].port_value == 2
