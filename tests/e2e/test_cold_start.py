"""Scale from zero on the real engine: a vLLM pool the autoscaler holds at zero from the start
(named in the scaling settings, no replica running). The first call waits through vLLM's
whole cold start, told so by waiting events, and is served; the started event says how long
the cold start took; the next call finds the replica up and does not wait."""
import pytest

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
                               engine="vllm") as mesh:
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
