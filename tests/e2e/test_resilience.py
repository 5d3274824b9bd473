"""Replicas come and go, the control plane goes away: the mesh keeps serving.

These run after test_api.py (they kill processes) and in this order."""
import asyncio

import grpc
import pytest

from deploy.local.envoy_admin import cluster_endpoints
from services.controlplane.resources import generation_cluster_name
from meshllm.api_key import keyed_channel
from meshllm.api.inference.v1 import inference_pb2
from tests.e2e.streams import chat_request, generate, public_stub

pytestmark = pytest.mark.e2e


async def served_by(mesh, count: int) -> list[str]:
    """The replica of each of `count` concurrent generations through Envoy."""
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        stub = public_stub(channel)
        streams = await asyncio.gather(*(generate(stub, chat_request(max_tokens=2))
                                         for _ in range(count)))
    for events in streams:
        assert events[-1].WhichOneof("event") == "finished"
    return [events[0].started.replica for events in streams]


async def test_both_replicas_serve_traffic(mesh):
    assert set(await served_by(mesh, 12)) == {"generation-1", "generation-2"}


async def test_a_replica_that_registers_is_in_envoys_endpoints_within_2s(mesh):
    cluster = generation_cluster_name("tiny-llama")  # the served name: the model directory's
    replica = await mesh.add_generation_replica("generation-3")
    registered_at = asyncio.get_running_loop().time()  # it prints READY once registered
    address = f"127.0.0.1:{replica.port}"
    while address not in await cluster_endpoints(mesh.options.ports.admin, cluster):
        assert asyncio.get_running_loop().time() - registered_at < 2.0, \
            f"{address} not in Envoy's {cluster} endpoints 2 s after registering"
        await asyncio.sleep(0.05)
    await mesh.wait_until_routed([replica], timeout=10)  # its first health check passed
    assert "generation-3" in await served_by(mesh, 12)


async def test_sigterm_drains_a_replica_without_cutting_its_open_stream(mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        stub = public_stub(channel)
        for _ in range(40):  # Envoy balances by least requests: soon one lands on generation-3
            stream = stub.Generate(chat_request(max_tokens=400), timeout=120)
            started = (await stream.read()).started
            if started.replica == "generation-3":
                break
            stream.cancel()
        assert started.replica == "generation-3"
        assert (await stream.read()).WhichOneof("event") == "delta"
        draining = asyncio.create_task(mesh.generation["generation-3"].stop())
        events = []
        while (event := await stream.read()) is not grpc.aio.EOF:
            events.append(event)
        await draining
    finished = events[-1].finished
    assert finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert finished.usage.completion_tokens == 400
    assert "generation-3" not in await served_by(mesh, 6)


async def test_kill_9_of_a_replica_leaves_new_requests_succeeding_on_the_others(mesh):
    await mesh.generation["generation-1"].kill()
    for _ in range(3):
        replicas = await served_by(mesh, 4)
        assert "generation-1" not in replicas


async def test_envoy_serves_its_last_config_after_the_control_plane_stops(mesh):
    await mesh.controlplane.kill()
    await asyncio.sleep(0.5)
    assert set(await served_by(mesh, 6)) == {"generation-2"}
