"""Scale from zero on the real engine: a vLLM pool the autoscaler holds at zero from the start
(named in the scaling settings, no replica running). The first call waits through vLLM's
whole cold start, told so by waiting events, and is served; the started event says how long
the cold start took; the next call finds the replica up and does not wait. Scaled to zero
again, the pool's next replica is the warm pool's process, whose engine core is forked from
its forkserver (services/generation/engine_forkserver.py), and it serves too."""
import asyncio
import time

import grpc
import pytest

from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.api_key import keyed_channel
from tests.e2e.streams import chat_request, generate, kinds, public_stub
from tests.integration.mesh.autoscaled import autoscaled_mesh

pytestmark = pytest.mark.e2e
SCALING = """
[pools."tiny-llama"]
min_replicas = 0
max_replicas = 1
idle_timeout_seconds = 600
"""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    async with autoscaled_mesh(tmp_path_factory.mktemp("mesh"), SCALING, generation_replicas=0,
                               engine="vllm", warm_pool_size=1) as mesh:
        yield mesh


async def test_a_call_for_a_pool_at_zero_waits_for_vllms_cold_start_and_is_served(mesh):
    assert not mesh.generation
    address = f"127.0.0.1:{mesh.options.ports.public}"
    async with keyed_channel(address, mesh.api_key) as channel:
        stub = public_stub(channel)

        cold = await generate(stub, chat_request(max_tokens=8), timeout=300)
        warm = await generate(stub, chat_request(max_tokens=8), timeout=60)

    cold_kinds = kinds(cold)
    assert cold_kinds[0] == "waiting" and cold_kinds[-1] == "finished", cold_kinds
    started = cold[cold_kinds.index("started")].started
    assert started.model == "tiny-llama"
    # vLLM loads in tens of seconds; waiting events came every 2 s meanwhile.
    waited = started.cold_start.ToTimedelta().total_seconds()
    assert waited > 2 and cold_kinds.count("waiting") >= int(waited / 2)
    assert cold[-1].finished.usage.completion_tokens > 0
    assert kinds(warm)[0] == "started" and not warm[0].started.HasField("cold_start")
    assert len(mesh.generation) == 1


async def set_scale(mesh, **request) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.controlplane}") as channel:
        await scaling_pb2_grpc.ScalingServiceStub(channel).SetScale(scaling_pb2.SetScaleRequest(
            service="generation", pool="tiny-llama", **request), timeout=10)


async def eventually(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_the_next_replica_after_zero_comes_from_the_warm_pool_and_serves(mesh):
    await eventually(lambda: mesh.warm_pool.ready == 1, "no warm process got ready", 300)
    taken = mesh.warm_pool.taken
    await set_scale(mesh, replicas=0)
    await eventually(lambda: not mesh.generation, "the pool did not scale to zero", 120)
    await set_scale(mesh, unpin=True)

    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        events = await generate(public_stub(channel), chat_request(max_tokens=8), timeout=300)

    assert kinds(events)[-1] == "finished" and events[-1].finished.usage.completion_tokens > 0
    assert mesh.warm_pool.taken == taken + 1
