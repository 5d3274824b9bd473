"""Resource builders: plain functions that make Envoy v3 messages (xds-protos) — clusters,
endpoints and the listener shape here, what each listener runs in listeners.py, routes in
routes.py.

Nothing here validates; Envoy does. Every builder is checked by `envoy --mode validate` in
tests/unit/controlplane/test_envoy_resources.py.
"""
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from meshllm.protos import duration

PUBLIC_LISTENER = "public"
MESH_LISTENER = "mesh"
ROUTER_CLUSTER = "router"
AUTH_CLUSTER = "auth"
MODERATION_CLUSTER = "moderation"
RETRIEVAL_CLUSTER = "retrieval"
# Set on purpose: Envoy's default of 1,024 per cluster would cap concurrent streams (each
# stream holds one request for its whole length).
CIRCUIT_BREAKER_LIMIT = 10_000


@dataclass(frozen=True)
class EnvoyLayout:
    """Where Envoy listens and how it treats streams; from ControlPlaneSettings."""

    listen_host: str = "127.0.0.1"
    public_port: int = 8080
    mesh_port: int = 8081
    stream_idle_timeout_seconds: float = 300.0
    connect_timeout_seconds: float = 1.0
    keepalive_interval_seconds: float = 10.0
    keepalive_timeout_seconds: float = 20.0
    health_check_interval_seconds: float = 2.0
    health_check_timeout_seconds: float = 5.0
    auth_timeout_seconds: float = 1.0
    open_tenant: str = ""
    """Non-empty: public inference calls need no key and belong to this tenant (see
    ControlPlaneSettings.open_tenant)."""
    open_tenant_policy: bytes = b""
    """The open tenant's serialized policy; empty is the default policy."""


def generation_cluster_name(model: str) -> str:
    """The cluster of one model's generation pool, safe for any model name.

    A readable slug for stats and /clusters, plus a hash of the exact name so that models
    differing only in punctuation or case ("Org/M" and "org-m") never share a cluster.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:48] or "model"
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"generation.{slug}.{digest}"


def service_cluster_name(service: str) -> str:
    """The cluster of a (non-generation) service: its name, e.g. "router"."""
    return service


def pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3)


def http2_options(layout: EnvoyLayout) -> protocol_pb2.Http2ProtocolOptions:
    """HTTP/2 with keepalive PINGs: a peer that vanished without a FIN or RST (host down,
    network cut) is noticed within interval + timeout, not at the stream idle timeout."""
    return protocol_pb2.Http2ProtocolOptions(
        connection_keepalive=protocol_pb2.KeepaliveSettings(
            interval=duration(layout.keepalive_interval_seconds),
            timeout=duration(layout.keepalive_timeout_seconds)))


def health_check(layout: EnvoyLayout) -> health_check_pb2.HealthCheck:
    """grpc.health.v1 Check on the replica's overall health ("").

    A replica that answers NOT_SERVING (draining, or its lease renewal died) leaves the
    balancing set at its next check; one that does not answer (busy, or gone) only after
    three misses, so a saturated replica is not taken for a dead one. The timeout is long
    for the same reason: on a saturated 2-core host a health check may wait its turn.
    """
    interval = duration(layout.health_check_interval_seconds)
    return health_check_pb2.HealthCheck(
        timeout=duration(layout.health_check_timeout_seconds),
        interval=interval,
        interval_jitter_percent=10,
        # The default of 60 s would leave an idle pool's health that stale.
        no_traffic_interval=interval,
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=3),
        healthy_threshold=wrappers_pb2.UInt32Value(value=1),
        grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck())


def outlier_detection(local_origin_only: bool) -> outlier_detection_pb2.OutlierDetection:
    """Passive ejection. Local-origin errors (connect refused, reset, timeout) always count,
    apart from the statuses a host answers (split_external_local_origin_errors).

    `local_origin_only` is for services that call others (the router): a status they answer
    is often a downstream's they pass on (UNAVAILABLE when generation is full or gone), so
    counting it would eject the healthy caller for its callee's trouble (seen here: the only
    router ejected by consecutive_gateway_failure). Such a cluster enforces nothing external.
    Default max_ejection_percent is 10 %: with two replicas nothing would ever be ejected.
    """
    one_hundred, zero = wrappers_pb2.UInt32Value(value=100), wrappers_pb2.UInt32Value(value=0)
    detection = outlier_detection_pb2.OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=3),
        enforcing_consecutive_local_origin_failure=one_hundred,
        interval=duration(1.0),
        base_ejection_time=duration(5.0),
        max_ejection_percent=one_hundred)
    if local_origin_only:
        detection.enforcing_consecutive_5xx.CopyFrom(zero)
        detection.enforcing_consecutive_gateway_failure.CopyFrom(zero)
        detection.enforcing_success_rate.CopyFrom(zero)
        detection.enforcing_failure_percentage.CopyFrom(zero)
    else:
        detection.consecutive_5xx.CopyFrom(wrappers_pb2.UInt32Value(value=5))
        detection.consecutive_gateway_failure.CopyFrom(wrappers_pb2.UInt32Value(value=3))
        detection.enforcing_consecutive_gateway_failure.CopyFrom(one_hundred)
    return detection


def cluster(name: str, layout: EnvoyLayout,
            local_origin_only: bool = False) -> cluster_pb2.Cluster:
    """An HTTP/2 (gRPC) cluster whose endpoints come by EDS over ADS, health-checked by
    grpc.health.v1. `local_origin_only`: see `outlier_detection`."""
    limit = wrappers_pb2.UInt32Value(value=CIRCUIT_BREAKER_LIMIT)
    h2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=http2_options(layout)))
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration(layout.connect_timeout_seconds),
        # Streams differ a lot in length; least-request spreads them better than round robin.
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(h2)},
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=limit, max_pending_requests=limit, max_requests=limit,
                max_retries=wrappers_pb2.UInt32Value(value=CIRCUIT_BREAKER_LIMIT // 10))]),
        health_checks=[health_check(layout)],
        # The control plane decides membership (a replica deregisters when it drains and is
        # gone from EDS at once); health checks decide only who gets calls meanwhile. Without
        # this, Envoy would keep a removed host until it failed its checks.
        ignore_health_on_host_removal=True,
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            # The panic threshold stays at its default (50 %) on purpose: when every replica
            # of a pool fails its checks (all saturated, say), Envoy still balances over them
            # rather than answer "no healthy upstream".
            healthy_panic_threshold=percent_pb2.Percent(value=50.0),
            # Health changes reach the balancer at once, not merged over 1 s: a new replica
            # (held back until its first check passes) takes calls as soon as it passes, and
            # one that reports NOT_SERVING stops getting them at its next check.
            update_merge_window=duration(0)),
        outlier_detection=outlier_detection(local_origin_only),
    )


@dataclass(frozen=True)
class Endpoint:
    """One replica address in a load assignment."""

    host: str
    port: int
    hostname: str = ""


def load_assignment(cluster_name: str,
                    endpoints: Iterable[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    """The cluster's live endpoints (empty is valid: the cluster then has no hosts)."""
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
                address=e.host, port_value=e.port)),
            hostname=e.hostname))
        for e in endpoints]
    localities = [endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name, endpoints=localities if lb_endpoints else [])


def listener(name: str, port: int, layout: EnvoyLayout,
             http_filters: Sequence[hcm_pb2.HttpFilter] = (),
             route_config: route_pb2.RouteConfiguration | None = None,
             local_replies: hcm_pb2.LocalReplyConfig | None = None) -> listener_pb2.Listener:
    """A gRPC listener: HTTP connection manager with routes by RDS (named like the listener).

    `http_filters` run before the router, in order (listeners.public_http_filters). `route_config`
    inlines the routes instead of RDS (used to validate a static config). `local_replies`
    rewrites replies Envoy makes itself (see listeners.public_local_replies).
    """
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stream_idle_timeout=duration(layout.stream_idle_timeout_seconds),
        http2_protocol_options=http2_options(layout),
        http_filters=[*http_filters, hcm_pb2.HttpFilter(
            name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
    )
    if local_replies is not None:
        manager.local_reply_config.CopyFrom(local_replies)
    if route_config is None:
        manager.rds.CopyFrom(hcm_pb2.Rds(config_source=_ads(), route_config_name=name))
    else:
        manager.route_config.CopyFrom(route_config)
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
            address=layout.listen_host, port_value=port)),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=pack(manager))])])

