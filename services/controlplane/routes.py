"""Route builders: the public listener's routes (the public API and reflection to the router,
the auth admin API to auth) and the mesh listener's routes by gRPC service and model pool,
each with its retry policy.

Checked by `envoy --mode validate` in tests/unit/controlplane/test_envoy_resources.py.
"""
from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from meshllm.protos import MODEL_HEADER, duration
from meshllm.tenancy import REQUEST_LIMIT_HEADER, TENANT_HEADER
from services.controlplane.listeners import EXT_AUTHZ_FILTER
from services.controlplane.resources import (
    AUTH_CLUSTER, MESH_LISTENER, MODERATION_CLUSTER, PUBLIC_LISTENER, RETRIEVAL_CLUSTER,
    ROUTER_CLUSTER,
    generation_cluster_name, pack,
    service_cluster_name,
)

GENERATION_PREFIX = "/meshllm.generation.v1.GenerationService/"
INFERENCE_PREFIX = "/meshllm.inference.v1.InferenceService/"
REFLECTION_PREFIX = "/grpc.reflection."
# The auth service's two APIs go to one cluster by two listeners: the admin API is public
# (ext_authz checks the caller's key and role like any call), the usage API (Reserve/Settle,
# which spends budgets) only on the mesh, for the router.
AUTH_ADMIN_PREFIX = "/meshllm.auth.v1.AuthService/"
AUTH_USAGE_PREFIX = "/meshllm.auth.v1.UsageService/"
# Moderation likewise: the router's ModerationService on the mesh only (it trusts the tenant
# headers its caller sends), the audit API public, behind ext_authz's admin check.
MODERATION_PREFIX = "/meshllm.moderation.v1.ModerationService/"
AUDIT_PREFIX = "/meshllm.moderation.v1.AuditService/"
# Retrieval is on both: clients load and search their collections (public, behind ext_authz,
# rate limited like inference), the router searches for grounded generations (mesh).
RETRIEVAL_PREFIX = "/meshllm.retrieval.v1.RetrievalService/"
TENANT_DESCRIPTOR_KEY = "tenant"
LIMIT_DESCRIPTOR_KEY = "limit"
"""The rate-limit descriptor entry of an inference call: ("tenant", <the tenant id that
ext_authz set in x-meshllm-tenant>)."""
# Unary calls get a bound: the caller's grpc-timeout, at most this.
UNARY_TIMEOUT_SECONDS = 15.0
# What a caller sees when its model has no pool: Envoy turns a local reply to a gRPC request
# into a trailers-only response, mapping HTTP 404 to grpc-status 12 (UNIMPLEMENTED).
UNKNOWN_MODEL_HTTP_STATUS = 404
# What Envoy retries, before the first response byte only (it cannot replay a started stream).
# The public listener retries only failures of the router itself: a status the router answers
# (UNAVAILABLE, RESOURCE_EXHAUSTED) is a downstream's that the mesh listener already retried,
# and retrying it here would multiply the load on the pool that refused it.
PUBLIC_RETRY_ON = "connect-failure,refused-stream,reset"
# A generation replica that is full (RESOURCE_EXHAUSTED, its admission cap) or draining
# (UNAVAILABLE) leaves the call to a sibling; the caller sees the status only when all refuse.
GENERATION_RETRY_ON = "connect-failure,refused-stream,reset,unavailable,resource-exhausted"
SERVICE_RETRY_ON = "connect-failure,refused-stream,reset,unavailable"
# Auth's calls change state (create a key, reserve budget): retried only when the request never
# reached a replica, so that nothing is done twice.
AUTH_RETRY_ON = "connect-failure,refused-stream"


def retry_policy(retry_on: str, num_retries: int,
                 pool_size: int = 1) -> route_components_pb2.RetryPolicy:
    """Retries that avoid every host already tried (previous_hosts).

    The predicate only rejects a pick, and the balancer picks again at random (least
    request between two random hosts: with idle hosts, one already tried comes back half the
    time among two). With one untried host of n left, each pick finds it about once in n, so
    5 n picks miss it less than 1 % of the time; a pick costs nothing next to a call.
    """
    return route_components_pb2.RetryPolicy(
        retry_on=retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=num_retries),
        retry_host_predicate=[route_components_pb2.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=max(16, 5 * pool_size))


def _streaming_route_action(cluster_name: str,
                            retries: route_components_pb2.RetryPolicy,
                            ) -> route_components_pb2.RouteAction:
    """No route timeout (15 s by default cuts streams); the caller's grpc-timeout bounds it.

    Retries only happen before the first response byte (Envoy cannot replay a stream that
    started).
    """
    return route_components_pb2.RouteAction(
        cluster=cluster_name,
        timeout=duration(0),
        max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
            grpc_timeout_header_max=duration(0)),
        retry_policy=retries)


def _unary_route_action(cluster_name: str,
                        retries: route_components_pb2.RetryPolicy,
                        ) -> route_components_pb2.RouteAction:
    """The caller's grpc-timeout, capped, bounds the call; without one the cap does."""
    cap = duration(UNARY_TIMEOUT_SECONDS)
    return route_components_pb2.RouteAction(
        cluster=cluster_name,
        timeout=cap,
        max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
            grpc_timeout_header_max=cap),
        retry_policy=retries)


def _prefix_route(name: str, prefix: str, cluster_name: str,
                  retries: route_components_pb2.RetryPolicy) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(prefix=prefix),
        route=_streaming_route_action(cluster_name, retries))


def _auth_route(name: str, prefix: str) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(prefix=prefix),
        route=_unary_route_action(AUTH_CLUSTER, retry_policy(AUTH_RETRY_ON, num_retries=2)))


def _audit_route() -> route_components_pb2.Route:
    """Reading the trail changes nothing: retried like any service call."""
    return _prefix_route("moderation-audit", AUDIT_PREFIX, MODERATION_CLUSTER,
                         retry_policy(SERVICE_RETRY_ON, num_retries=2))


def tenant_rate_limit() -> route_components_pb2.RateLimit:
    """One descriptor per call of a tenant with a request limit, ("tenant", <x-meshllm-tenant>),
    ("limit", <its requests per minute>), which the rate limit filter sends to the auth service
    (listeners.rate_limit). Both headers are ext_authz's, set after the client's copies were
    stripped; a tenant without a limit gets no limit header, so no descriptor and no call to
    the rate limit service at all."""
    action = route_components_pb2.RateLimit.Action
    return route_components_pb2.RateLimit(actions=[
        action(request_headers=action.RequestHeaders(
            header_name=TENANT_HEADER, descriptor_key=TENANT_DESCRIPTOR_KEY)),
        action(request_headers=action.RequestHeaders(
            header_name=REQUEST_LIMIT_HEADER, descriptor_key=LIMIT_DESCRIPTOR_KEY)),
    ])


def without_ext_authz(route: route_components_pb2.Route) -> route_components_pb2.Route:
    route.typed_per_filter_config[EXT_AUTHZ_FILTER].Pack(
        ext_authz_pb2.ExtAuthzPerRoute(disabled=True))
    return route


def public_routes(open_tenant: str = "") -> route_pb2.RouteConfiguration:
    """The public listener: the public API (rate limited per tenant) and reflection, served
    by the router, retrieval's API (rate limited too), and auth's admin API. Never auth's
    usage API (see AUTH_USAGE_PREFIX).
    With an open tenant the public API and reflection need no key (and carry no rate limit);
    the admin API always does."""
    retries = retry_policy(PUBLIC_RETRY_ON, num_retries=2)
    inference = _prefix_route("inference", INFERENCE_PREFIX, ROUTER_CLUSTER, retries)
    retrieval = _prefix_route("retrieval", RETRIEVAL_PREFIX, RETRIEVAL_CLUSTER, retries)
    reflection = _prefix_route("reflection", REFLECTION_PREFIX, ROUTER_CLUSTER, retries)
    if open_tenant:
        inference, retrieval, reflection = (without_ext_authz(route) for route in
                                            (inference, retrieval, reflection))
    else:
        inference.route.rate_limits.append(tenant_rate_limit())
        retrieval.route.rate_limits.append(tenant_rate_limit())
    return route_pb2.RouteConfiguration(name=PUBLIC_LISTENER, virtual_hosts=[
        route_components_pb2.VirtualHost(name=PUBLIC_LISTENER, domains=["*"], routes=[
            inference, retrieval, reflection, _auth_route("auth-admin", AUTH_ADMIN_PREFIX),
            _audit_route(),
        ])])


def generation_retries(pool_size: int) -> route_components_pb2.RetryPolicy:
    """Enough retries to try every replica of the pool once. A pool of one still retries
    once, on the same replica after Envoy's back-off (25 ms and up): worth it for a broken
    connection, and it costs a full replica one more refusal."""
    return retry_policy(GENERATION_RETRY_ON, num_retries=max(1, pool_size - 1),
                        pool_size=pool_size)


def mesh_routes(pool_sizes: Mapping[str, int],
                services: Sequence[str]) -> route_pb2.RouteConfiguration:
    """Service-to-service: generation by the x-meshllm-model header, auth's usage API, the
    rest by service name.

    `pool_sizes` is the number of endpoints of each model's pool (its retries try them all).
    A generation call whose model has no pool (or no header) gets a local reply:
    HTTP 404 → grpc-status UNIMPLEMENTED with a message naming the header. `services` are
    the other services, each reached by its whole package (`/meshllm.<service>.v1.`); auth is
    not one of them: only its usage API is on the mesh.
    """
    routes = [
        route_components_pb2.Route(
            name=f"generation/{model}",
            match=route_components_pb2.RouteMatch(
                prefix=GENERATION_PREFIX,
                headers=[route_components_pb2.HeaderMatcher(
                    name=MODEL_HEADER,
                    string_match=string_pb2.StringMatcher(exact=model))]),
            route=_streaming_route_action(generation_cluster_name(model),
                                          generation_retries(size)))
        for model, size in pool_sizes.items()]
    routes.append(route_components_pb2.Route(
        name="generation/unknown-model",
        match=route_components_pb2.RouteMatch(prefix=GENERATION_PREFIX),
        direct_response=route_components_pb2.DirectResponseAction(
            status=UNKNOWN_MODEL_HTTP_STATUS,
            body=base_pb2.DataSource(inline_string=(
                f"no generation pool serves the model in the {MODEL_HEADER} metadata "
                "(missing, or no replica of it ever registered)")))))
    routes.append(_auth_route("auth-usage", AUTH_USAGE_PREFIX))
    service_retries = retry_policy(SERVICE_RETRY_ON, num_retries=2)
    routes.append(_prefix_route("moderation", MODERATION_PREFIX, MODERATION_CLUSTER,
                                service_retries))
    routes.extend(_prefix_route(service, f"/meshllm.{service}.v1.", service_cluster_name(service),
                                service_retries)
                  for service in services)
    return route_pb2.RouteConfiguration(name=MESH_LISTENER, virtual_hosts=[
        route_components_pb2.VirtualHost(name=MESH_LISTENER, domains=["*"], routes=routes)])
