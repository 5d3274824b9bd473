"""Route builders: the public listener's routes to the router and the mesh listener's
routes by gRPC service and model pool, each with its retry policy.

Checked by `envoy --mode validate` in tests/unit/controlplane/test_envoy_resources.py.
"""
from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from meshllm.protos import MODEL_HEADER, duration
from services.controlplane.resources import (
    MESH_LISTENER, PUBLIC_LISTENER, ROUTER_CLUSTER, generation_cluster_name, pack,
    service_cluster_name,
)

GENERATION_PREFIX = "/meshllm.generation.v1.GenerationService/"
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


def _prefix_route(name: str, prefix: str, cluster_name: str,
                  retries: route_components_pb2.RetryPolicy) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(prefix=prefix),
        route=_streaming_route_action(cluster_name, retries))


def public_routes() -> route_pb2.RouteConfiguration:
    """The public listener: only the public API and reflection, both served by the router."""
    retries = retry_policy(PUBLIC_RETRY_ON, num_retries=2)
    return route_pb2.RouteConfiguration(name=PUBLIC_LISTENER, virtual_hosts=[
        route_components_pb2.VirtualHost(name=PUBLIC_LISTENER, domains=["*"], routes=[
            _prefix_route("inference", "/meshllm.inference.v1.InferenceService/",
                          ROUTER_CLUSTER, retries),
            _prefix_route("reflection", "/grpc.reflection.", ROUTER_CLUSTER, retries),
        ])])


def generation_retries(pool_size: int) -> route_components_pb2.RetryPolicy:
    """Enough retries to try every replica of the pool once. A pool of one still retries
    once, on the same replica after Envoy's back-off (25 ms and up): worth it for a broken
    connection, and it costs a full replica one more refusal."""
    return retry_policy(GENERATION_RETRY_ON, num_retries=max(1, pool_size - 1),
                        pool_size=pool_size)


def mesh_routes(pool_sizes: Mapping[str, int],
                services: Sequence[str]) -> route_pb2.RouteConfiguration:
    """Service-to-service: generation by the x-meshllm-model header, the rest by service name.

    `pool_sizes` is the number of endpoints of each model's pool (its retries try them all).
    A generation call whose model has no pool (or no header) gets a local reply:
    HTTP 404 → grpc-status UNIMPLEMENTED with a message naming the header.
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
    service_retries = retry_policy(SERVICE_RETRY_ON, num_retries=2)
    routes.extend(_prefix_route(service, f"/meshllm.{service}.v1.", service_cluster_name(service),
                                service_retries)
                  for service in services)
    return route_pb2.RouteConfiguration(name=MESH_LISTENER, virtual_hosts=[
        route_components_pb2.VirtualHost(name=MESH_LISTENER, domains=["*"], routes=routes)])
