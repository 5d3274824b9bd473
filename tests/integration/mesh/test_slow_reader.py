"""A client that stops reading until flow control blocks the mesh's writes, then goes away:
the replica stops generating at once, not when a garbage collector reaches a generator.

The sim engine streams fast enough here to fill every buffer between the replica and the
client (the tiny vLLM model's 2,048-token context cannot); the cleanup under test is the
servers' own (the router's and generation's call wrapper), the same whatever the engine."""
import asyncio

import grpc
import pytest

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from tests.tenant_headers import tenant_headers
from tests.h2_grpc import BlockingReader

GENERATE = "/meshllm.inference.v1.InferenceService/Generate"
# Enough output to fill the reader's window, Envoy's buffers and the router's stream window.
LONG = inference_pb2.GenerateRequest(prompt="stream a lot", sampling={"max_tokens": 1_500_000})


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", workdir=tmp_path_factory.mktemp("mesh"),
        generation_env=(("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.01"),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.00005"),
                        ("MESHLLM_GENERATION_MAX_MODEL_LEN", "2000000"))))
    async with mesh.running(generation_replicas=1):
        yield mesh


async def running(mesh) -> int:
    (replica,) = mesh.generation.values()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        load = await generation_pb2_grpc.GenerationServiceStub(channel).GetLoad(
            generation_pb2.GetLoadRequest())
    return load.running_requests


async def block_then_disconnect(mesh, port: int, headers: list[tuple[str, str]]) -> None:
    """Starts LONG on `port`, reads nothing past its window until the replica's stream has
    been running for a while (everything between is full), disconnects, and asserts that the
    replica stops running it within 1 s."""
    reader = BlockingReader("127.0.0.1", port, window=1024)
    await reader.start(GENERATE, LONG.SerializeToString(), headers=headers)
    await asyncio.wait_for(reader.wait_for_bytes(512), 10)  # started and the first deltas
    await asyncio.sleep(3)  # ~60k tokens a second fill Envoy's buffers and the windows
    assert await running(mesh) == 1 and not reader.ended.is_set()
    await reader.disconnect()
    gone = asyncio.get_running_loop().time()
    while await running(mesh):
        assert asyncio.get_running_loop().time() - gone < 1.0, \
            "the replica still generates 1 s after its blocked client disconnected"
        await asyncio.sleep(0.01)


async def test_a_reader_blocked_by_flow_control_through_envoy_frees_the_replica_within_1s(mesh):
    await block_then_disconnect(mesh, mesh.options.ports.public,
                                [("authorization", f"Bearer {mesh.api_key}")])


async def test_a_reader_blocking_the_routers_write_frees_the_replica_within_1s(mesh):
    await block_then_disconnect(mesh, mesh.router.port, tenant_headers())
