"""Scaling down cuts no stream: with 32 streams open on two replicas, the pool is scaled to one
(`meshllm scale`'s RPC); the replica that goes drains — deregisters, takes no new call, lets
its streams finish — and every stream ends with its finished event and every token."""
import asyncio
import time

import grpc
import pytest

from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from meshllm.api_key import KeyedStub
from tests.integration.mesh.autoscaled import autoscaled_mesh

MODEL = "sim-drain"
STREAMS, TOKENS = 32, 60
SCALING = """
[pools.default]
min_replicas = 2
max_replicas = 2
"""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    async with autoscaled_mesh(
            tmp_path_factory.mktemp("mesh"), SCALING, generation_replicas=2, model=MODEL,
            # Each stream lasts ~3 s: long enough to be open when the scale-down lands.
            generation_env=(("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.05"),
                            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.05"))
    ) as mesh:
        yield mesh


async def wait_for_pool(scaling) -> None:
    """Until the autoscaler's first tick after the replicas registered lists their pool."""
    deadline = time.monotonic() + 10
    while not any(unit.service == "generation" and unit.ready_replicas == 2 for unit in (
            await scaling.GetScalingStatus(scaling_pb2.GetScalingStatusRequest(), timeout=5)
    ).units):
        assert time.monotonic() < deadline, "the pool never showed in the scaling status"
        await asyncio.sleep(0.1)


async def test_scaling_down_with_32_open_streams_cuts_none(mesh):
    first_events = asyncio.Queue()

    async def stream(stub) -> tuple[str, int]:
        replica, tokens, finished = "", 0, None
        async for event in stub.Generate(inference_pb2.GenerateRequest(
                prompt="drain", sampling={"max_tokens": TOKENS}), timeout=60):
            if event.HasField("started"):
                replica = event.started.replica
                first_events.put_nowait(replica)
            if event.HasField("finished"):
                finished = event.finished
        # The dev tenant's output is moderated: deltas carry text, the finished event counts.
        assert finished is not None
        return replica, finished.usage.completion_tokens

    public = f"127.0.0.1:{mesh.options.ports.public}"
    controlplane = f"127.0.0.1:{mesh.options.ports.controlplane}"
    async with grpc.aio.insecure_channel(public) as channel, \
            grpc.aio.insecure_channel(controlplane) as control:
        stub = KeyedStub(inference_pb2_grpc.InferenceServiceStub(channel), mesh.api_key)
        scaling = scaling_pb2_grpc.ScalingServiceStub(control)
        await wait_for_pool(scaling)
        streams = [asyncio.create_task(stream(stub)) for _ in range(STREAMS)]
        for _ in range(STREAMS):
            await asyncio.wait_for(first_events.get(), 30)
        leaving = list(mesh.generation.values())[-1]

        await scaling.SetScale(
            scaling_pb2.SetScaleRequest(service="generation", replicas=1), timeout=5)

        deadline = time.monotonic() + 10
        while leaving.name in mesh.generation:
            assert time.monotonic() < deadline, "the supervisor did not scale down"
            await asyncio.sleep(0.05)
        outcomes = await asyncio.gather(*streams)

    assert all(tokens == TOKENS for _, tokens in outcomes)
    # Streams were open on the replica that left, and each of them finished.
    assert sum(replica == leaving.name for replica, _ in outcomes) > 0
    assert len(mesh.generation) == 1
    await asyncio.wait_for(leaving.process.wait(), 30)
