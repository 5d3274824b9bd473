"""RegistryService over real gRPC: statuses a replica can act on."""
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings


@pytest.fixture(scope="module")
async def registry_stub():
    controlplane = ControlPlane(ControlPlaneSettings(port=0, metrics_port=-1,
                                                     lease_ttl_seconds=0.3))
    port = await controlplane.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)
    await controlplane.stop()


def replica(**overrides) -> registry_pb2.Replica:
    fields = dict(replica_id="r1", service="router", host="127.0.0.1", port=5000)
    return registry_pb2.Replica(**{**fields, **overrides})


async def test_register_answers_the_lease_ttl_and_lists_the_replica(registry_stub):
    reply = await registry_stub.RegisterReplica(
        registry_pb2.RegisterReplicaRequest(replica=replica(labels={"engine": "sim"})))
    assert reply.lease_ttl.ToMilliseconds() == 300
    listed = await registry_stub.ListReplicas(registry_pb2.ListReplicasRequest(service="router"))
    assert [r.labels["engine"] for r in listed.replicas] == ["sim"]
    await registry_stub.DeregisterReplica(registry_pb2.DeregisterReplicaRequest(replica_id="r1"))


async def test_a_registration_without_a_port_is_invalid_argument_naming_the_field(registry_stub):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry_stub.RegisterReplica(
            registry_pb2.RegisterReplicaRequest(replica=replica(port=0)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "replica.port" in raised.value.details()
    status = rpc_status.from_call(raised.value)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "replica.port"


async def test_a_heartbeat_without_a_live_lease_is_not_found_saying_register_again(registry_stub):
    await registry_stub.RegisterReplica(registry_pb2.RegisterReplicaRequest(replica=replica()))
    await registry_stub.Heartbeat(registry_pb2.HeartbeatRequest(replica_id="r1"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry_stub.Heartbeat(registry_pb2.HeartbeatRequest(replica_id="unknown"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register again" in raised.value.details()


async def test_deregistering_an_unknown_replica_is_ok(registry_stub):
    await registry_stub.DeregisterReplica(registry_pb2.DeregisterReplicaRequest(replica_id="x"))
