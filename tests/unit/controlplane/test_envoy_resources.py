from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from services.controlplane import listeners, resources, routes
from services.controlplane.resources import EnvoyLayout, Endpoint

LAYOUT = EnvoyLayout(listen_host="127.0.0.1", public_port=18080, mesh_port=18081)


def test_cluster_is_accepted_by_envoy(envoy_validate):
    envoy_validate(clusters=[resources.cluster("router", LAYOUT, local_origin_only=True),
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


def test_public_listener_with_its_filters_and_routes_is_accepted_by_envoy(envoy_validate):
    listener = listeners.public_listener(LAYOUT, route_config=routes.public_routes())
    envoy_validate(clusters=[resources.cluster(name, LAYOUT, local_origin_only=True)
                             for name in ("router", "auth", "moderation", "retrieval")], listeners=[listener])


def test_mesh_listener_with_its_routes_is_accepted_by_envoy(envoy_validate):
    models = {"tiny": 3, "Qwen/Qwen2.5-0.5B-Instruct": 0}
    mesh = routes.mesh_routes(models, ["retrieval"])
    listener = listeners.mesh_listener(LAYOUT, route_config=mesh)
    clusters = [resources.cluster(name, LAYOUT) for name in
                ["retrieval", "auth", "moderation", *map(resources.generation_cluster_name, models)]]
    envoy_validate(clusters=clusters, listeners=[listener])


def test_listeners_by_rds_over_ads_are_accepted_by_envoy(envoy_validate):
    # The public listener's filters name the auth cluster, which a real snapshot always has.
    envoy_validate(clusters=[resources.cluster("auth", LAYOUT, local_origin_only=True)],
                   listeners=listeners.listeners(LAYOUT))


def test_streaming_routes_leave_the_deadline_to_the_caller():
    for route in routes.mesh_routes({"tiny": 1}, ["retrieval"]).virtual_hosts[0].routes:
        if route.HasField("route") and route.name != "auth-usage":
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
    addresses = {l.name: l.address.socket_address for l in listeners.listeners(layout)}
    assert addresses["public"] == address_pb2.SocketAddress(address="0.0.0.0", port_value=1)
    assert addresses["mesh"].port_value == 2


def _retry_on(route) -> set[str]:
    return set(route.route.retry_policy.retry_on.split(","))


def _routes(config) -> dict:
    return {route.name: route for route in config.virtual_hosts[0].routes}


def test_generation_routes_retry_an_admission_rejection_on_every_other_replica():
    by_name = _routes(routes.mesh_routes({"tiny": 4, "big": 1, "none": 0}, ["retrieval"]))
    for model, retries in [("tiny", 3), ("big", 1), ("none", 1)]:
        route = by_name[f"generation/{model}"]
        assert {"resource-exhausted", "unavailable", "connect-failure"} <= _retry_on(route)
        assert route.route.retry_policy.num_retries.value == retries
        # Enough picks that the balancer finds the one replica not tried yet.
        assert route.route.retry_policy.host_selection_retry_max_attempts >= 5 * (retries + 1)
        assert [p.name for p in route.route.retry_policy.retry_host_predicate] == [
            "envoy.retry_host_predicates.previous_hosts"]
    assert "resource-exhausted" not in _retry_on(by_name["retrieval"])


def test_the_public_route_retries_only_failures_of_the_router_itself():
    for name in ("inference", "reflection"):
        retry_on = _retry_on(_routes(routes.public_routes())[name])
        assert {"connect-failure", "refused-stream", "reset"} == retry_on
        # The router passes these on from generation, which the mesh listener already
        # retried: retrying them here would multiply the load on a full pool.
        assert not {"resource-exhausted", "unavailable"} & retry_on


def test_listeners_and_clusters_keep_http2_connections_alive():
    layout = EnvoyLayout(keepalive_interval_seconds=4, keepalive_timeout_seconds=3)
    for built in listeners.listeners(layout):
        manager = hcm_pb2.HttpConnectionManager()
        built.filter_chains[0].filters[0].typed_config.Unpack(manager)
        keepalive = manager.http2_protocol_options.connection_keepalive
        assert (keepalive.interval.seconds, keepalive.timeout.seconds) == (4, 3)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    resources.cluster("router", layout).typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    keepalive = options.explicit_http_config.http2_protocol_options.connection_keepalive
    assert (keepalive.interval.seconds, keepalive.timeout.seconds) == (4, 3)


def test_clusters_health_check_by_grpc_health_and_leave_removal_to_the_control_plane():
    built = resources.cluster("router", EnvoyLayout(health_check_interval_seconds=3))
    (check,) = built.health_checks
    assert check.HasField("grpc_health_check") and check.grpc_health_check.service_name == ""
    assert check.interval.seconds == 3 and check.no_traffic_interval.seconds == 3
    assert check.unhealthy_threshold.value == 3 and check.healthy_threshold.value == 1
    assert check.timeout.seconds >= check.interval.seconds  # a busy replica is not a dead one
    assert built.ignore_health_on_host_removal
    assert built.common_lb_config.healthy_panic_threshold.value == 50.0
    assert built.common_lb_config.update_merge_window.ToNanoseconds() == 0
    assert built.common_lb_config.HasField("update_merge_window")


def test_the_router_cluster_ejects_only_on_the_routers_own_local_origin_failures():
    router = resources.cluster("router", LAYOUT, local_origin_only=True).outlier_detection
    assert router.split_external_local_origin_errors
    assert router.consecutive_local_origin_failure.value == 3
    assert router.enforcing_consecutive_local_origin_failure.value == 100
    for enforcing in ("enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
                      "enforcing_success_rate", "enforcing_failure_percentage"):
        assert getattr(router, enforcing).value == 0 and router.HasField(enforcing), enforcing


def test_a_generation_cluster_also_ejects_a_replica_that_keeps_failing_calls():
    generation = resources.cluster("generation.tiny", LAYOUT).outlier_detection
    assert generation.split_external_local_origin_errors
    assert generation.consecutive_gateway_failure.value == 3
    assert generation.enforcing_consecutive_gateway_failure.value == 100
