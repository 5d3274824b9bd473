"""A real Envoy against an in-process control plane, and tiny replicas that register with it:
what the Envoy integration tests share (the fixtures are in conftest.py)."""
import asyncio
import inspect
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from deploy.local.ports import free_port
from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.registration import ReplicaRegistration
from services.controlplane.ads import AdsCallbacks
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings

ECHO = "/meshllm.echo.v1.EchoService/Echo"
GENERATE = "/meshllm.generation.v1.GenerationService/GetLoad"
GENERATION_SERVICE = "meshllm.generation.v1.GenerationService"
LEASE_TTL = 1.5
KEEPALIVE_INTERVAL = 1.0


class RecordingCallbacks(AdsCallbacks):
    def __init__(self):
        self.acks, self.nacks = [], []

    def on_ack(self, stream_id, type_url, version):
        super().on_ack(stream_id, type_url, version)
        self.acks.append((type_url, version))

    def on_nack(self, stream_id, type_url, rejected_version, kept_version, error):
        super().on_nack(stream_id, type_url, rejected_version, kept_version, error)
        self.nacks.append((type_url, rejected_version, error))


class Mesh:
    """Ports, the control plane and Envoy shared by this module's tests."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.admin_port, self.public_port, self.mesh_port = free_port(), free_port(), free_port()
        self.callbacks = RecordingCallbacks()
        self.controlplane: ControlPlane | None = None
        self.controlplane_port = 0

    def settings(self, port: int, grace: float) -> ControlPlaneSettings:
        return ControlPlaneSettings(
            port=port, metrics_port=-1, lease_ttl_seconds=LEASE_TTL, eds_grace_seconds=grace,
            public_port=self.public_port, mesh_port=self.mesh_port, admin_port=self.admin_port,
            keepalive_interval_seconds=KEEPALIVE_INTERVAL, health_check_interval_seconds=0.5)

    async def start_controlplane(self, port: int = 0, grace: float = 0.0) -> None:
        self.controlplane = ControlPlane(self.settings(port, grace), self.callbacks)
        self.controlplane_port = await self.controlplane.start()

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
            return r.read().decode()

    def endpoints(self, cluster: str) -> set[int]:
        prefix = f"{cluster}::127.0.0.1:"
        return {int(line[len(prefix):].split("::")[0])
                for line in self.admin("/clusters").splitlines()
                if line.startswith(prefix) and "::health_flags::" in line}

    def health_flags(self, cluster: str, port: int) -> str:
        prefix = f"{cluster}::127.0.0.1:{port}::health_flags::"
        for line in self.admin("/clusters").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        return ""

    def stat(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            if line.startswith(f"{name}: "):
                return int(line.split(": ")[1])
        return 0


async def eventually(check, timeout: float = 2.0):
    """Polls `check` until it returns something truthy; returns that, or fails at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            result = None
            if loop.time() > deadline:
                raise
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"not true within {timeout} s: {check}")
        await asyncio.sleep(0.02)


async def serve_and_register(server: grpc.aio.Server, controlplane_port: int,
                             replica: registry_pb2.Replica) -> tuple[int, ReplicaRegistration]:
    """Starts `server` on a free loopback port and registers it as `replica` (its host and
    port filled in) with the control plane; the port and the registration to stop later."""
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    replica.host, replica.port = "127.0.0.1", port
    registration = ReplicaRegistration(f"127.0.0.1:{controlplane_port}", replica,
                                       retry_seconds=0.05)
    await registration.start(timeout=5)
    return port, registration


class Replica:
    """A real tiny gRPC server that answers any path below its service with its name, or
    with `refuse` when set; with grpc.health.v1, which Envoy checks."""

    def __init__(self, name: str, service: str, full_service: str, model: str = ""):
        self.name, self.service, self.full_service, self.model = name, service, full_service, model
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        self.refuse: grpc.StatusCode | None = None
        self.port = 0
        self.registration: ReplicaRegistration | None = None

    async def start(self, controlplane_port: int) -> "Replica":
        async def answer(request: bytes, context) -> bytes:
            if self.refuse is not None:
                await context.abort(self.refuse, f"{self.name} refuses")
            return self.name.encode() + b":" + request

        handler = grpc.unary_unary_rpc_method_handler(answer)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            self.full_service, {"Echo": handler, "GetLoad": handler})])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port, self.registration = await serve_and_register(
            self.server, controlplane_port, registry_pb2.Replica(
                replica_id=self.name, service=self.service, model=self.model))
        return self

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
        await self.server.stop(0)


async def call(channel, path: str, model: str = "") -> str:
    metadata = (("x-meshllm-model", model),) if model else ()
    reply = await channel.unary_unary(path)(b"hi", timeout=2, metadata=metadata)
    return reply.decode()
