"""A real Envoy against the control plane: registration to routing, NACK, and outages."""
import asyncio
import inspect
import socket
import subprocess
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from services.controlplane import resources
from services.controlplane.ads import AdsCallbacks
from services.controlplane.app import ControlPlane
from services.controlplane.bootstrap import render_bootstrap
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.envoy_binary import envoy_binary_path
from services.controlplane.snapshot import CLUSTER, make_snapshot

ECHO = "/meshllm.echo.v1.EchoService/Echo"
GENERATE = "/meshllm.generation.v1.GenerationService/GetLoad"
GENERATION_SERVICE = "meshllm.generation.v1.GenerationService"
LEASE_TTL = 1.5
KEEPALIVE_INTERVAL = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.registration = ReplicaRegistration(
            f"127.0.0.1:{controlplane_port}",
            registry_pb2.Replica(replica_id=self.name, service=self.service, host="127.0.0.1",
                                 port=self.port, model=self.model),
            retry_seconds=0.05)
        await self.registration.start(timeout=5)
        return self

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
        await self.server.stop(0)


class LoadServicer(generation_pb2_grpc.GenerationServiceServicer):
    async def GetLoad(self, request, context):
        return generation_pb2.GetLoadResponse()


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = Mesh(tmp_path_factory.mktemp("envoy"))
    await mesh.start_controlplane()
    bootstrap = mesh.tmp_path / "bootstrap.yaml"
    bootstrap.write_text(render_bootstrap("127.0.0.1", mesh.controlplane_port, mesh.admin_port,
                                          node_id="integration"))
    log = open(mesh.tmp_path / "envoy.log", "w")
    envoy = subprocess.Popen(
        [str(envoy_binary_path()), "-c", str(bootstrap), "--use-dynamic-base-id",
         "-l", "warning", "--drain-time-s", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    mesh.replicas = []
    try:
        await eventually(lambda: mesh.stat("listener_manager.lds.update_success") >= 1, 10)
        yield mesh
    finally:
        for replica in mesh.replicas:
            await replica.stop()
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        log.close()
        if mesh.controlplane is not None:
            await mesh.controlplane.stop()


@pytest.fixture(scope="module")
async def channel(mesh):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.mesh_port}") as channel:
        yield channel


async def call(channel, path: str, model: str = "") -> str:
    metadata = (("x-meshllm-model", model),) if model else ()
    reply = await channel.unary_unary(path)(b"hi", timeout=2, metadata=metadata)
    return reply.decode()


async def test_a_registered_replica_appears_in_envoy_within_two_seconds(mesh):
    echo = await Replica("echo-1", "echo", "meshllm.echo.v1.EchoService").start(
        mesh.controlplane_port)
    mesh.replicas.append(echo)
    await eventually(lambda: echo.port in mesh.endpoints("echo"), timeout=2.0)


async def test_a_call_through_envoy_reaches_the_replica(mesh, channel):
    assert await eventually(lambda: call(channel, ECHO), timeout=2.0) == "echo-1:hi"


async def test_generation_calls_go_to_the_pool_of_the_requested_model(mesh, channel):
    for name, model in [("gen-tiny", "tiny"), ("gen-big", "Org/Big-1.0")]:
        mesh.replicas.append(await Replica(
            name, "generation", "meshllm.generation.v1.GenerationService", model=model,
        ).start(mesh.controlplane_port))
    assert await eventually(lambda: call(channel, GENERATE, "tiny")) == "gen-tiny:hi"
    assert await eventually(lambda: call(channel, GENERATE, "Org/Big-1.0")) == "gen-big:hi"
    assert resources.generation_cluster_name("tiny") in mesh.admin("/clusters")


@pytest.mark.parametrize("model", ["no-such-model", ""])
async def test_a_model_without_a_pool_gets_unimplemented_naming_the_header(channel, model):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, GENERATE, model)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "x-meshllm-model" in raised.value.details()


async def test_an_admission_rejection_is_retried_on_a_sibling_before_the_caller_sees_it(
        mesh, channel):
    full, free = [await Replica(name, "generation", GENERATION_SERVICE, model="busy").start(
        mesh.controlplane_port) for name in ("busy-full", "busy-free")]
    mesh.replicas += [full, free]
    full.refuse = grpc.StatusCode.RESOURCE_EXHAUSTED
    cluster = resources.generation_cluster_name("busy")
    # A new host takes calls once its first health check passed (and Envoy's balancer has
    # heard, within its 1 s update_merge_window).
    await eventually(lambda: all(mesh.health_flags(cluster, replica.port) == "healthy"
                                 for replica in (full, free)), 5)
    await eventually(lambda: call(channel, GENERATE, "busy"), 3)
    for _ in range(12):  # least-request balancing sends some of these to the full one first
        assert await call(channel, GENERATE, "busy") == "busy-free:hi"
    assert mesh.stat(f"cluster.{cluster}.upstream_rq_retry") >= 1
    free.refuse = grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, GENERATE, "busy")
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_replica_that_reports_not_serving_gets_no_new_calls_while_a_sibling_serves(
        mesh, channel):
    full, free = mesh.replicas[-2:]
    full.refuse = free.refuse = None
    await full.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    cluster = resources.generation_cluster_name("busy")
    await eventually(lambda: "failed_active_hc" in mesh.health_flags(cluster, full.port), 5)

    async def all_answered_by_the_serving_one() -> bool:
        return {await call(channel, GENERATE, "busy") for _ in range(12)} == {"busy-free:hi"}

    # Envoy hands health changes to its balancer once per update_merge_window (1 s).
    await eventually(all_answered_by_the_serving_one, 3)
    assert await all_answered_by_the_serving_one()
    await full.health.set("", health_pb2.HealthCheckResponse.SERVING)
    await eventually(lambda: mesh.health_flags(cluster, full.port) == "healthy", 5)


async def test_the_last_replica_of_a_pool_stays_in_envoy_when_its_heartbeats_stop(
        mesh, channel):
    lonely = await Replica("lonely", "generation", GENERATION_SERVICE, model="lonely").start(
        mesh.controlplane_port)
    mesh.replicas.append(lonely)
    cluster = resources.generation_cluster_name("lonely")
    await eventually(lambda: lonely.port in mesh.endpoints(cluster))
    lonely.registration._stopping.set()  # heartbeats stop; the process lives on
    await asyncio.sleep(LEASE_TTL * 2)
    assert lonely.port in mesh.endpoints(cluster)
    assert await call(channel, GENERATE, "lonely") == "lonely:hi"
    # A live sibling takes the pool over; the silent one goes.
    sibling = await Replica("lonely-2", "generation", GENERATION_SERVICE, model="lonely").start(
        mesh.controlplane_port)
    mesh.replicas.append(sibling)
    await eventually(lambda: mesh.endpoints(cluster) == {sibling.port})
    mesh.replicas.remove(lonely)
    await lonely.stop()


async def test_envoys_keepalive_pings_leave_an_idle_connection_to_a_mesh_server_open(
        mesh, channel):
    server = MeshServer(ServiceSettings(controlplane_address="", metrics_port=-1), "generation")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server,
                       LoadServicer(), GENERATION_SERVICE)
    port = await server.start()
    registration = ReplicaRegistration(f"127.0.0.1:{mesh.controlplane_port}", registry_pb2.Replica(
        replica_id="pinged", service="generation", host="127.0.0.1", port=port, model="pinged"))
    await registration.start(timeout=5)
    cluster = resources.generation_cluster_name("pinged")
    try:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await eventually(lambda: stub.GetLoad(generation_pb2.GetLoadRequest(), timeout=1,
                                              metadata=(("x-meshllm-model", "pinged"),)))
        await asyncio.sleep(KEEPALIVE_INTERVAL * 4.5)  # Envoy PINGs; nobody calls
        # grpc's default policy would have answered the third ping with GOAWAY.
        assert mesh.stat(f"cluster.{cluster}.upstream_cx_close_notify") == 0
        assert mesh.stat(f"cluster.{cluster}.upstream_cx_destroy") == 0
        assert mesh.stat(f"cluster.{cluster}.upstream_cx_active") == 1
    finally:
        await registration.stop()
        await server.drain(grace_seconds=0)


async def test_deregistration_removes_the_endpoint_from_envoy(mesh, channel):
    echo = mesh.replicas.pop(0)
    await echo.stop()
    await eventually(lambda: echo.port not in mesh.endpoints("echo"), timeout=2.0)
    assert "echo" in mesh.admin("/clusters")  # the pool's cluster stays, with no hosts
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, ECHO)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_rejected_config_is_reported_and_envoy_keeps_serving_the_last_good_one(
        mesh, channel):
    publisher = mesh.controlplane.publisher
    good_build = publisher.build

    def build_with_a_bad_cluster(replicas, pools):
        snapshot = good_build(replicas, pools)
        bad = resources.cluster("bad", mesh.controlplane.settings.envoy_layout())
        bad.connect_timeout.FromNanoseconds(-1_000_000_000)  # Envoy wants a positive one
        by_type = {t: list(r.by_name.values()) for t, r in snapshot.resources.items()}
        by_type[CLUSTER].append(bad)
        return make_snapshot(*by_type.values())

    rejected_before = mesh.stat("cluster_manager.cds.update_rejected")
    publisher.build = build_with_a_bad_cluster
    try:
        publisher.publish()
        nack = await eventually(lambda: [n for n in mesh.callbacks.nacks if n[0] == CLUSTER])
        assert "duration" in nack[-1][2].lower()
        assert mesh.stat("cluster_manager.cds.update_rejected") == rejected_before + 1
        assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
    finally:
        publisher.build = good_build
    good = publisher.publish().of_type(CLUSTER).version
    await eventually(lambda: (CLUSTER, good) in mesh.callbacks.acks)


async def test_envoy_keeps_serving_its_last_config_when_the_control_plane_dies(mesh, channel):
    await mesh.controlplane.stop()
    await asyncio.sleep(0.5)
    assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
    assert mesh.replicas[0].port in mesh.endpoints(resources.generation_cluster_name("tiny"))


async def test_a_restarted_control_plane_waits_for_replicas_before_pushing_endpoints(
        mesh, channel):
    # Same port, as Envoy's bootstrap names it; an empty registry, and Envoy reconnects
    # within its 0.1-1 s back-off. The replicas re-register when their heartbeat says
    # NOT_FOUND. Throughout, the last good endpoints keep serving.
    await mesh.start_controlplane(port=mesh.controlplane_port, grace=3.0)
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.0
    while loop.time() < until:
        assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
        await asyncio.sleep(0.1)
    assert {r.name for r in mesh.replicas} <= {
        r.replica_id for r in mesh.controlplane.registry.live()}
