"""The one Prometheus registry and the metrics every gRPC server reports."""
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server

RPCS_HANDLED = Counter(
    "meshllm_grpc_server_handled",
    "RPCs completed, by method and gRPC status code",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "meshllm_grpc_server_handling_seconds",
    "Time from an RPC's arrival to its last message, by method",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def serve_metrics(host: str, port: int) -> int:
    """Starts the /metrics endpoint (prometheus_client runs it on its own thread);
    returns the bound port, which differs from `port` when that is 0."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server.server_port
