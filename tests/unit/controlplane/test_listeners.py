import base64
import dataclasses

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.tenancy import IDENTITY_HEADERS
from services.controlplane import listeners, resources, routes
from services.controlplane.resources import EnvoyLayout

LAYOUT = EnvoyLayout(listen_host="127.0.0.1", public_port=18080, mesh_port=18081)


def manager_of(listener) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def filters_of(listener) -> dict[str, hcm_pb2.HttpFilter]:
    return {f.name: f for f in manager_of(listener).http_filters}


def unpacked(http_filter, message):
    assert http_filter.typed_config.Unpack(message)
    return message


def test_each_public_filter_is_accepted_by_envoy(envoy_validate):
    clusters = [resources.cluster(name, LAYOUT, local_origin_only=True)
                for name in ("router", "auth", "moderation", "retrieval")]
    for http_filter in listeners.public_http_filters(LAYOUT):
        envoy_validate(clusters=clusters, listeners=[resources.listener(
            "public", LAYOUT.public_port, LAYOUT, http_filters=[http_filter],
            route_config=routes.public_routes())])


def test_the_public_listener_strips_identity_then_checks_the_key_then_the_rate_then_routes():
    names = [f.name for f in manager_of(listeners.public_listener(LAYOUT)).http_filters]
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz",
                     "envoy.filters.http.ratelimit", "envoy.filters.http.router"]


def test_the_mesh_listener_runs_neither_authz_nor_rate_limits():
    names = [f.name for f in manager_of(listeners.mesh_listener(LAYOUT)).http_filters]
    assert names == ["envoy.filters.http.router"]


def test_every_client_sent_identity_header_is_removed_from_the_request():
    strip = unpacked(filters_of(listeners.public_listener(LAYOUT))[
        listeners.STRIP_IDENTITY_FILTER], header_mutation_pb2.HeaderMutation())
    removed = [m.remove for m in strip.mutations.request_mutations]
    assert sorted(removed) == sorted(IDENTITY_HEADERS) == sorted([
        "x-meshllm-tenant", "x-meshllm-policy-bin", "x-meshllm-policy-version",
        "x-meshllm-key-id", "x-meshllm-requests-per-minute"])
    assert not strip.mutations.response_mutations


def test_ext_authz_asks_the_auth_cluster_and_fails_closed_with_unavailable():
    authz = unpacked(filters_of(listeners.public_listener(LAYOUT))[listeners.EXT_AUTHZ_FILTER],
                     ext_authz_pb2.ExtAuthz())
    assert authz.grpc_service.envoy_grpc.cluster_name == "auth"
    assert authz.grpc_service.timeout.ToMilliseconds() == 1000  # a burst must not fail closed
    assert authz.transport_api_version == config_source_pb2.V3
    assert not authz.failure_mode_allow
    assert authz.status_on_error.code == 503  # grpc-status UNAVAILABLE for a gRPC client
    assert not authz.HasField("with_request_body")


def test_the_rate_limit_asks_the_auth_cluster_fails_closed_and_says_resource_exhausted():
    limit = unpacked(filters_of(listeners.public_listener(LAYOUT))[listeners.RATE_LIMIT_FILTER],
                     rate_limit_pb2.RateLimit())
    assert limit.domain == "meshllm"
    assert limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "auth"
    assert limit.rate_limit_service.transport_api_version == config_source_pb2.V3
    assert limit.timeout.ToMilliseconds() == 1000
    assert limit.failure_mode_deny
    assert limit.status_on_error.code == 503  # not the default 500, which gRPC calls UNKNOWN
    assert limit.rate_limited_as_resource_exhausted
    assert limit.enable_x_ratelimit_headers == rate_limit_pb2.RateLimit.DRAFT_VERSION_03


def test_the_auth_timeout_comes_from_the_layout():
    public = filters_of(listeners.public_listener(EnvoyLayout(auth_timeout_seconds=0.1)))
    authz = unpacked(public[listeners.EXT_AUTHZ_FILTER], ext_authz_pb2.ExtAuthz())
    limit = unpacked(public[listeners.RATE_LIMIT_FILTER], rate_limit_pb2.RateLimit())
    assert authz.grpc_service.timeout.ToMilliseconds() == 100
    assert limit.timeout.ToMilliseconds() == 100


def test_envoys_own_refusals_for_an_unanswered_check_or_rate_limit_carry_a_message():
    authz, rate_limit = manager_of(listeners.public_listener(LAYOUT)).local_reply_config.mappers
    # ext_authz's flag, and only its 503 (no answer): a denial (401, 403) keeps auth's message.
    flag, status = authz.filter.and_filter.filters
    assert list(flag.response_flag_filter.flags) == ["UAEX"]
    assert status.status_code_filter.comparison.value.default_value == 503
    assert list(rate_limit.filter.response_flag_filter.flags) == ["RLSE"]
    assert "auth service did not answer" in authz.body.inline_string
    assert "rate limit service (auth) did not answer" in rate_limit.body.inline_string
    assert not manager_of(listeners.mesh_listener(LAYOUT)).HasField("local_reply_config")


OPEN = EnvoyLayout(listen_host="127.0.0.1", public_port=18080, mesh_port=18081,
                   open_tenant="solo")


def test_an_open_tenant_listener_and_routes_are_accepted_by_envoy(envoy_validate):
    clusters = [resources.cluster(name, OPEN, local_origin_only=True)
                for name in ("router", "auth", "moderation", "retrieval")]
    envoy_validate(clusters=clusters, listeners=[listeners.public_listener(
        OPEN, route_config=routes.public_routes(OPEN.open_tenant))])


def test_an_open_tenant_is_asserted_by_envoy_after_the_client_copies_are_stripped():
    strip = unpacked(filters_of(listeners.public_listener(OPEN))[listeners.STRIP_IDENTITY_FILTER],
                     header_mutation_pb2.HeaderMutation())
    mutations = strip.mutations.request_mutations
    assert [m.remove for m in mutations[:-1]] == list(IDENTITY_HEADERS)
    assert (mutations[-1].append.header.key, mutations[-1].append.header.value) == (
        "x-meshllm-tenant", "solo")


def test_an_open_tenants_policy_is_asserted_too_and_accepted_by_envoy(envoy_validate):
    policy = auth_pb2.Policy(moderation=moderation_pb2.ModerationPolicy(output_disabled=True))
    layout = dataclasses.replace(OPEN, open_tenant_policy=policy.SerializeToString())
    strip = unpacked(filters_of(listeners.public_listener(layout))[
        listeners.STRIP_IDENTITY_FILTER], header_mutation_pb2.HeaderMutation())
    header = strip.mutations.request_mutations[-1].append.header
    assert header.key == "x-meshllm-policy-bin"
    padded = header.value + "=" * (-len(header.value) % 4)
    assert auth_pb2.Policy.FromString(base64.b64decode(padded)) == policy
    clusters = [resources.cluster(name, layout, local_origin_only=True)
                for name in ("router", "auth", "moderation", "retrieval")]
    envoy_validate(clusters=clusters, listeners=[listeners.public_listener(
        layout, route_config=routes.public_routes(layout.open_tenant))])


def test_an_open_tenant_needs_no_key_for_inference_but_an_admin_key_for_the_admin_api():
    (host,) = routes.public_routes("solo").virtual_hosts
    by_name = {route.name: route for route in host.routes}
    for name in ("inference", "retrieval", "reflection"):
        per_route = ext_authz_pb2.ExtAuthzPerRoute()
        assert by_name[name].typed_per_filter_config[listeners.EXT_AUTHZ_FILTER].Unpack(per_route)
        assert per_route.disabled and not by_name[name].route.rate_limits
    assert listeners.EXT_AUTHZ_FILTER not in by_name["auth-admin"].typed_per_filter_config
