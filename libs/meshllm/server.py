"""The one server bootstrap: grpc.aio, health, reflection, metrics, request context, drain."""
import asyncio
import signal
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from meshllm.logging import get_logger
from meshllm.metrics import serve_metrics
from meshllm.call_wrapper import WrappingRegistrar
from meshllm.settings import ServiceSettings

log = get_logger(__name__)


class MeshServer:
    """A service's gRPC server. Register servicers, `start`, then drain on a signal:

        server = MeshServer(settings, service="generation")
        server.add_service(add_XServicer_to_server, servicer, "meshllm.x.v1.XService")
        port = await server.start()
        await server.wait_for_shutdown_signal()
        await server.drain()
    """

    def __init__(self, settings: ServiceSettings, service: str):
        self.settings = settings
        self.service = service
        limit = settings.max_receive_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                # Envoy PINGs every connection every few seconds (HTTP/2 keepalive, set by the
                # control plane); grpc's default policy answers pings more frequent than one
                # per 5 minutes (2 hours without calls) with GOAWAY "too_many_pings".
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ],
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        self._service_names: list[str] = []
        self._shutdown = asyncio.Event()
        self.port = 0
        self.metrics_port = 0

    def add_service(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any,
                    full_name: str) -> None:
        add_to_server(servicer, WrappingRegistrar(self.server))
        self._service_names.append(full_name)

    async def start(self) -> int:
        """Binds, starts serving and reports SERVING; returns the bound gRPC port."""
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self.server.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port = serve_metrics(self.settings.host, self.settings.metrics_port)
        for name in ("", *self._service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._install_signal_handlers()
        log.info("serving", port=self.port, metrics_port=self.metrics_port,
                 services=self._service_names)
        return self.port

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._shutdown.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (in-process tests)
                return

    async def set_not_serving(self, reason: str) -> None:
        """Health turns NOT_SERVING for the server and every service, so that balancers
        (Envoy's health checks) send no new calls, while calls in flight go on; for a
        replica that can no longer keep itself registered. `reason` goes to the log."""
        log.error("not_serving", reason=reason)
        await self._health.enter_graceful_shutdown()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def wait_for_shutdown_signal(self) -> None:
        await self._shutdown.wait()

    async def drain(self, grace_seconds: float | None = None) -> None:
        """Stops taking new calls, lets in-flight streams finish within the grace, then stops.

        Health turns NOT_SERVING first so balancers stop sending while streams finish."""
        grace = self.settings.drain_grace_seconds if grace_seconds is None else grace_seconds
        await self._health.enter_graceful_shutdown()
        log.info("draining", grace_seconds=grace)
        await self.server.stop(grace)
        log.info("stopped")
