"""A real Envoy's health checks, retries and keepalive against replicas that register with
the control plane: a full replica's refusal goes to a sibling, a NOT_SERVING replica gets no
new calls, a silent last replica stays, and Envoy's pings do not upset a MeshServer."""
import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from services.controlplane import resources
from tests.integration.controlplane.envoy_mesh import (
    GENERATE, GENERATION_SERVICE, KEEPALIVE_INTERVAL, LEASE_TTL, Replica, call, eventually,
)


class LoadServicer(generation_pb2_grpc.GenerationServiceServicer):
    async def GetLoad(self, request, context):
        return generation_pb2.GetLoadResponse()


async def test_an_admission_rejection_is_retried_on_a_sibling_before_the_caller_sees_it(
        mesh, channel):
    full, free = [await Replica(name, "generation", GENERATION_SERVICE, model="busy").start(
        mesh.controlplane_port) for name in ("busy-full", "busy-free")]
    mesh.replicas += [full, free]
    full.refuse = grpc.StatusCode.RESOURCE_EXHAUSTED
    cluster = resources.generation_cluster_name("busy")
    # A new host takes calls once its first health check passed.
    await eventually(lambda: all(mesh.health_flags(cluster, replica.port) == "healthy"
                                 for replica in (full, free)), 5)
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
