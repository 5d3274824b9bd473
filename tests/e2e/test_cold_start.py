"""Scale from zero on the real engine: a vLLM pool the autoscaler holds at zero from the start
(named in the scaling settings, no replica running). The first call waits through vLLM's
whole cold start, told so by waiting events, and is served; the started event says how long
the cold start took; the next call finds the replica up and does not wait. Idle past its
timeout, the pool goes to zero again; the next call waits for the warm pool's process, whose
engine core is forked from its forkserver (services/generation/engine_forkserver.py), and is
served."""
import asyncio
import time

import pytest

from meshllm.api_key import keyed_channel
from tests.e2e.streams import chat_request, generate, kinds, public_stub
from tests.integration.mesh.autoscaled import autoscaled_mesh, wait_for_zero

pytestmark = pytest.mark.e2e
SCALING = """
[pools."tiny-llama"]
min_replicas = 0
max_replicas = 1
idle_timeout_seconds = 10
scale_down_delay_seconds = 0
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


async def eventually(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_an_idle_pool_goes_to_zero_and_its_next_replica_comes_from_the_warm_pool(mesh):
    await eventually(lambda: mesh.warm_pool.ready == 1, "no warm process got ready", 300)
    taken = mesh.warm_pool.taken
    await wait_for_zero(mesh, timeout=120)

    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        events = await generate(public_stub(channel), chat_request(max_tokens=8), timeout=300)

    event_kinds = kinds(events)
    assert event_kinds[0] == "waiting" and event_kinds[-1] == "finished", event_kinds
    assert events[event_kinds.index("started")].started.HasField("cold_start")
    assert events[-1].finished.usage.completion_tokens > 0
    assert mesh.warm_pool.taken == taken + 1
