"""A replica's lease against a real control plane: a blocked event loop does not lose it, and
a renewal that dies turns the replica NOT_SERVING, saying why."""
import asyncio
import os
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings

LEASE_TTL = 1.0
SERVICE = "meshllm.generation.v1.GenerationService"


def replica(replica_id: str, port: int = 5000) -> registry_pb2.Replica:
    return registry_pb2.Replica(replica_id=replica_id, service="generation", host="127.0.0.1",
                                port=port, model="m")


@pytest.fixture
async def controlplane_process(tmp_path):
    """The control plane in a process of its own, so that blocking this test's loop stalls
    only the replica side. Yields its address and its log file."""
    log = tmp_path / "controlplane.log"
    env = {**os.environ, "MESHLLM_CONTROLPLANE_PORT": "0",
           "MESHLLM_CONTROLPLANE_METRICS_PORT": "-1",
           "MESHLLM_CONTROLPLANE_LEASE_TTL_SECONDS": str(LEASE_TTL)}
    with open(log, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.controlplane", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"READY port="), line
        yield f"127.0.0.1:{int(line.split(b'=')[1])}", log
    finally:
        process.terminate()
        await process.wait()


async def test_heartbeats_keep_the_lease_while_the_replicas_event_loop_is_blocked(
        controlplane_process):
    address, log = controlplane_process
    blocked = ReplicaRegistration(address, replica("blocked"), retry_seconds=0.05)
    await blocked.start(timeout=10)
    async with grpc.aio.insecure_channel(address) as channel:
        # A replica that registers and then never heartbeats: proof that leases do expire here.
        await registry_pb2_grpc.RegistryServiceStub(channel).RegisterReplica(
            registry_pb2.RegisterReplicaRequest(replica=replica("silent", port=5001)))
    time.sleep(LEASE_TTL * 3)  # on purpose: this loop runs nothing for three lease TTLs
    assert blocked.renewal_died is None
    async with grpc.aio.insecure_channel(address) as channel:
        listed = await registry_pb2_grpc.RegistryServiceStub(channel).ListReplicas(
            registry_pb2.ListReplicasRequest())
    assert [r.replica_id for r in listed.replicas] == ["blocked"]
    expired = [line for line in log.read_text().splitlines() if '"lease_expired"' in line]
    assert len(expired) == 1 and '"silent"' in expired[0]
    await blocked.stop()


class LoadServicer(generation_pb2_grpc.GenerationServiceServicer):
    async def GetLoad(self, request, context):
        return generation_pb2.GetLoadResponse()


async def test_a_replica_whose_lease_renewal_dies_turns_not_serving_and_says_why():
    controlplane = ControlPlane(ControlPlaneSettings(port=0, metrics_port=-1,
                                                     lease_ttl_seconds=LEASE_TTL))
    controlplane_port = await controlplane.start()
    server = MeshServer(ServiceSettings(controlplane_address="", metrics_port=-1), "generation")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server,
                       LoadServicer(), SERVICE)
    port = await server.start()
    registration = ReplicaRegistration(f"127.0.0.1:{controlplane_port}", replica("r1", port),
                                       retry_seconds=0.05, on_renewal_died=server.set_not_serving)
    await registration.start(timeout=5)
    try:
        # The registry forgets the replica, and refuses it when it registers again (as a
        # control plane restarted with stricter rules would).
        registration.replica.port = 0
        controlplane.registry.deregister("r1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.025)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert "RegistrationRefused" in registration.renewal_died
            assert "replica.port" in registration.renewal_died
            # Calls still get answers: only balancers are told to stop sending new ones.
            await generation_pb2_grpc.GenerationServiceStub(channel).GetLoad(
                generation_pb2.GetLoadRequest(), timeout=2)
    finally:
        await registration.stop()
        await server.drain(grace_seconds=0)
        await controlplane.stop()
