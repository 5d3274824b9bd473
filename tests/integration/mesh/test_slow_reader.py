"""A client that stops reading until flow control blocks the mesh, then disconnects: the
replica stops generating at once, not when a garbage collector reaches a generator.

The sim engine streams fast enough here to fill every buffer between the replica and the
client (the tiny vLLM model's 2,048-token context cannot); the cleanup path under test is
the servers' own (router and generation), the same whatever the engine."""
import asyncio

import grpc
import pytest

from deploy.local.envoy_admin import admin_get
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc

# A reader with a small receive window and no window growth: the client-side buffer is tiny.
SLOW_READER_OPTIONS = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024))


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", workdir=tmp_path_factory.mktemp("mesh"),
        generation_env=(("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.01"),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.0001"),
                        ("MESHLLM_GENERATION_MAX_MODEL_LEN", "2000000"))))
    try:
        await mesh.start(generation_replicas=1)
        yield mesh
    finally:
        await mesh.stop()


async def paused_reading(mesh) -> int:
    """How often Envoy stopped reading a side of a stream because the other side was full."""
    _, body = await admin_get(mesh.options.ports.admin, "/stats?filter=flow_control_paused")
    return sum(int(line.rpartition(": ")[2]) for line in body.splitlines() if ": " in line)


async def running(load_stub) -> int:
    return (await load_stub.GetLoad(generation_pb2.GetLoadRequest())).running_requests


async def test_a_reader_blocked_by_flow_control_that_disconnects_frees_the_replica_within_1s(mesh):
    (replica,) = mesh.generation.values()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct:
        load = generation_pb2_grpc.GenerationServiceStub(direct)
        paused_before = await paused_reading(mesh)
        slow = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}",
                                         options=SLOW_READER_OPTIONS)
        stub = inference_pb2_grpc.InferenceServiceStub(slow)
        call = stub.Generate(inference_pb2.GenerateRequest(
            prompt="stream a lot", sampling={"max_tokens": 1_500_000}), timeout=60)
        assert (await call.read()).WhichOneof("event") == "started"
        assert (await call.read()).WhichOneof("event") == "delta"
        # Now stop reading: the stream backs up from the client through Envoy to the router.
        async with asyncio.timeout(20):
            while await paused_reading(mesh) == paused_before:
                await asyncio.sleep(0.05)
        assert await running(load) == 1

        await slow.close()  # the client goes away without reading on
        gone = asyncio.get_running_loop().time()
        while await running(load):
            assert asyncio.get_running_loop().time() - gone < 1.0, \
                "the replica still generates 1 s after its blocked client disconnected"
            await asyncio.sleep(0.01)
