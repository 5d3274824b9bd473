"""The two listeners and what runs on them.

Public: strip client-sent identity headers, ext_authz (the auth service asserts tenant and
policy), the global rate limit (the auth service counts requests per tenant), then the router
filter. Every one of them is always there: every public request must belong to a tenant. Both
checks call the auth cluster, which exists from the first snapshot, empty until an auth replica
registers; until then (and whenever auth is unreachable) they fail closed with UNAVAILABLE.
Mesh: service to service, the router filter alone (callers there are our own services).

Checked by `envoy --mode validate` in tests/unit/controlplane/test_listeners.py.
"""
import base64

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import http_status_pb2
from google.protobuf import wrappers_pb2

from meshllm.protos import duration
from meshllm.tenancy import IDENTITY_HEADERS, POLICY_HEADER, TENANT_HEADER
from services.controlplane.resources import (
    AUTH_CLUSTER, MESH_LISTENER, PUBLIC_LISTENER, EnvoyLayout, listener, pack,
)

STRIP_IDENTITY_FILTER = "envoy.filters.http.header_mutation"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
RATE_LIMIT_FILTER = "envoy.filters.http.ratelimit"
RATE_LIMIT_DOMAIN = "meshllm"
"""The domain every ShouldRateLimit request carries; the auth service answers only this one."""
# Envoy turns a local reply to a gRPC call into grpc-status by its HTTP status: 503 is
# UNAVAILABLE. Without these, an unreachable auth would answer 403 (PERMISSION_DENIED, a
# wrong reason) from ext_authz and 500 (UNKNOWN) from the rate limit filter.
AUTH_UNREACHABLE_STATUS = http_status_pb2.ServiceUnavailable


def _auth_service(layout: EnvoyLayout) -> grpc_service_pb2.GrpcService:
    """Envoy's own gRPC client to the auth cluster, with a short deadline: a check that
    cannot answer in time fails the call closed rather than hold it."""
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=AUTH_CLUSTER),
        timeout=duration(layout.auth_timeout_seconds),
        # A replica that died is still in the cluster until its lease runs out (and with most
        # of a small pool dead, Envoy's panic mode keeps sending it checks): try another.
        retry_policy=base_pb2.RetryPolicy(
            retry_on="connect-failure,refused-stream,reset,unavailable",
            num_retries=wrappers_pb2.UInt32Value(value=2),
            retry_host_predicate=[base_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()))],
            host_selection_retry_max_attempts=3))


def strip_identity_headers(open_tenant: str = "",
                           open_tenant_policy: bytes = b"") -> hcm_pb2.HttpFilter:
    """Removes every client-sent copy of the headers only ext_authz may set; with an open
    tenant, asserts that tenant instead (ext_authz is off on the inference routes then).

    A filter, not the route's request_headers_to_remove: that runs in the router filter,
    after ext_authz, and would strip the headers auth has just set.
    """
    mutations = header_mutation_pb2.Mutations(request_mutations=[
        mutation_rules_pb2.HeaderMutation(remove=name) for name in IDENTITY_HEADERS])
    if open_tenant:
        mutations.request_mutations.append(mutation_rules_pb2.HeaderMutation(
            append=base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=TENANT_HEADER, value=open_tenant),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)))
        if open_tenant_policy:  # a -bin header's value is base64 on the wire
            mutations.request_mutations.append(mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(
                        key=POLICY_HEADER,
                        value=base64.b64encode(open_tenant_policy).decode().rstrip("=")),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)))
    return hcm_pb2.HttpFilter(name=STRIP_IDENTITY_FILTER, typed_config=pack(
        header_mutation_pb2.HeaderMutation(mutations=mutations)))


def ext_authz(layout: EnvoyLayout) -> hcm_pb2.HttpFilter:
    """envoy.service.auth.v3.Authorization/Check on the auth cluster, for every request.

    A denial is the auth service's own answer (its HTTP status becomes the gRPC status:
    401 UNAUTHENTICATED, 403 PERMISSION_DENIED, the body the message). Fails closed: no
    answer within the timeout, or no auth replica, is 503, which a gRPC client sees as
    UNAVAILABLE. The request body is not sent: the key travels in `authorization`.
    """
    return hcm_pb2.HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=pack(ext_authz_pb2.ExtAuthz(
        grpc_service=_auth_service(layout),
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=False,
        status_on_error=http_status_pb2.HttpStatus(code=AUTH_UNREACHABLE_STATUS))))


def rate_limit(layout: EnvoyLayout) -> hcm_pb2.HttpFilter:
    """envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit on the auth cluster, for
    routes that carry `rate_limits` (the inference routes: routes.tenant_rate_limit).

    The limits protect money, so the filter fails closed (`failure_mode_deny`; the default is
    open), with 503 → UNAVAILABLE. Over the limit is RESOURCE_EXHAUSTED rather than the
    default 429 → UNAVAILABLE, with the service's response headers (RetryInfo in
    grpc-status-details-bin) and x-ratelimit-* headers from its descriptor statuses.
    """
    return hcm_pb2.HttpFilter(name=RATE_LIMIT_FILTER, typed_config=pack(rate_limit_pb2.RateLimit(
        domain=RATE_LIMIT_DOMAIN,
        timeout=duration(layout.auth_timeout_seconds),
        failure_mode_deny=True,
        status_on_error=http_status_pb2.HttpStatus(code=AUTH_UNREACHABLE_STATUS),
        rate_limited_as_resource_exhausted=True,
        enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
        rate_limit_service=rls_pb2.RateLimitServiceConfig(
            grpc_service=_auth_service(layout),
            transport_api_version=config_source_pb2.V3))))


def _flagged(flag: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=[flag]))


def _status_is(status: int) -> accesslog_pb2.AccessLogFilter:
    # A runtime key is required; nothing sets it, so the default holds.
    value = base_pb2.RuntimeUInt32(default_value=status,
                                   runtime_key="meshllm.local_reply.status")
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(op=accesslog_pb2.ComparisonFilter.EQ,
                                                  value=value)))


def _message(matches: accesslog_pb2.AccessLogFilter, message: str) -> hcm_pb2.ResponseMapper:
    return hcm_pb2.ResponseMapper(filter=matches, body=base_pb2.DataSource(inline_string=message))


def public_local_replies() -> hcm_pb2.LocalReplyConfig:
    """A message for the two refusals that Envoy makes with none (a gRPC client would see a
    bare UNAVAILABLE): auth's check or rate limit did not answer. A denial keeps auth's own
    message (it is not a 503)."""
    authz_unanswered = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(
        filters=[_flagged("UAEX"), _status_is(AUTH_UNREACHABLE_STATUS)]))
    return hcm_pb2.LocalReplyConfig(mappers=[
        _message(authz_unanswered, "the call was not authorized: the auth service did not "
                                   "answer in time (or no replica of it runs); retry shortly"),
        _message(_flagged("RLSE"), "the call was not admitted: the rate limit service (auth) "
                                   "did not answer in time; retry shortly"),
    ])


def public_http_filters(layout: EnvoyLayout) -> list[hcm_pb2.HttpFilter]:
    """The public listener's filters before the router, in order."""
    return [strip_identity_headers(layout.open_tenant, layout.open_tenant_policy),
            ext_authz(layout), rate_limit(layout)]


def public_listener(layout: EnvoyLayout,
                    route_config: route_pb2.RouteConfiguration | None = None,
                    ) -> listener_pb2.Listener:
    """`route_config` inlines the routes instead of RDS (used to validate a static config)."""
    return listener(PUBLIC_LISTENER, layout.public_port, layout,
                    http_filters=public_http_filters(layout), route_config=route_config,
                    local_replies=public_local_replies())


def mesh_listener(layout: EnvoyLayout,
                  route_config: route_pb2.RouteConfiguration | None = None,
                  ) -> listener_pb2.Listener:
    return listener(MESH_LISTENER, layout.mesh_port, layout, route_config=route_config)


def listeners(layout: EnvoyLayout) -> list[listener_pb2.Listener]:
    """The public and mesh listeners, their routes by RDS."""
    return [public_listener(layout), mesh_listener(layout)]
