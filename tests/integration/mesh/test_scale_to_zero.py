"""Scale to zero and back through the whole mesh (Envoy, auth, router, control plane's
autoscaler, the local supervisor with a warm pool, sim replicas that take a second to
"load"): an idle pool goes to zero; a call for it waits (and is told so) while a warm
process becomes its replica; past the hold
bound calls are refused at once with RetryInfo; a deadline that passes while held is
DEADLINE_EXCEEDED from the router, not a hang."""
import asyncio
import time

import grpc
import pytest

from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from meshllm.api_key import KeyedStub
from tests.integration.mesh.autoscaled import autoscaled_mesh, wait_for_zero
from tests.status_details import error_details

MODEL = "sim-cold"
IDLE_TIMEOUT_SECONDS = 2
MAX_HELD = 20
LOAD_SECONDS = 1.5
SCALING = f"""
[defaults]
stable_window_seconds = 4
panic_window_seconds = 1
scale_down_delay_seconds = 0

[pools.default]
min_replicas = 0
max_replicas = 1
target_concurrency = 64
idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}
"""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    async with autoscaled_mesh(
            tmp_path_factory.mktemp("mesh"), SCALING, generation_replicas=1, model=MODEL,
            warm_pool_size=1,
            router_env=(("MESHLLM_ROUTER_MAX_HELD_CALLS_PER_POOL", str(MAX_HELD)),
                        ("MESHLLM_ROUTER_WAITING_EVENT_SECONDS", "0.5")),
            generation_env=(("MESHLLM_GENERATION_SIM_LOAD_SECONDS", str(LOAD_SECONDS)),
                            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.05"),
                            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.01"))
    ) as mesh:
        yield mesh


@pytest.fixture(scope="module")
async def stub(mesh):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}") as channel:
        yield KeyedStub(inference_pb2_grpc.InferenceServiceStub(channel), mesh.api_key)


def request(max_tokens: int = 8) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        chat={"messages": [{"role": inference_pb2.ROLE_USER, "content": "wake up"}]},
        sampling={"max_tokens": max_tokens})


async def events_of(stub, timeout: float = 30.0) -> list[inference_pb2.GenerateResponse]:
    return [event async for event in stub.Generate(request(), timeout=timeout)]


async def test_an_idle_pool_scales_to_zero_and_the_next_call_waits_for_a_cold_start(mesh, stub):
    pool = await wait_for_zero(mesh)
    assert "idle" in pool.last_decision.reason, pool.last_decision
    # The warm process may still be importing on a busy machine (every mesh now starts a
    # moderation replica, which loads torch): the call below must find it ready.
    await wait_for_warm_process(mesh)

    events = await events_of(stub)

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "waiting", kinds
    assert events[0].waiting.reason == inference_pb2.WAIT_REASON_COLD_START
    started = next(event.started for event in events if event.HasField("started"))
    assert kinds.index("started") > 0 and "waiting" not in kinds[kinds.index("started"):]
    # The replica "loads" for LOAD_SECONDS before it registers: the wait reported covers it.
    assert started.cold_start.ToTimedelta().total_seconds() >= LOAD_SECONDS
    assert kinds[-1] == "finished"
    assert events[-1].finished.usage.completion_tokens == 8
    # Waiting events repeat (every 0.5 s here) with the time waited, growing.
    waits = [event.waiting.waited.ToTimedelta().total_seconds()
             for event in events if event.HasField("waiting")]
    assert len(waits) >= 2 and waits == sorted(waits)
    assert len(mesh.generation) == 1
    # The replica that came up was a warm process given its assignment, and another warm
    # process took its place in the pool.
    assert mesh.warm_pool.taken >= 1
    await wait_for_warm_process(mesh)  # refilled


async def wait_for_warm_process(mesh) -> None:
    deadline = time.monotonic() + 30
    while mesh.warm_pool.ready < 1:
        assert time.monotonic() < deadline, "the warm pool has no ready process"
        await asyncio.sleep(0.1)


async def test_calls_past_the_hold_bound_are_refused_at_once_and_the_held_ones_are_served(
        mesh, stub):
    await wait_for_zero(mesh)

    async def one() -> tuple[str, float]:
        began = time.monotonic()
        try:
            events = await events_of(stub)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            details = error_details(error)
            assert details["ErrorInfo"].reason == "COLD_START_QUEUE_FULL"
            assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
            return "refused", time.monotonic() - began
        assert events[-1].HasField("finished")
        return "served", time.monotonic() - began

    outcomes = await asyncio.gather(*(one() for _ in range(50)))

    served = [took for outcome, took in outcomes if outcome == "served"]
    refused = [took for outcome, took in outcomes if outcome == "refused"]
    assert (len(served), len(refused)) == (MAX_HELD, 50 - MAX_HELD)
    # Refused before the replica had even loaded, not after waiting for it.
    assert max(refused) < LOAD_SECONDS <= min(served)


async def test_a_held_call_whose_deadline_passes_gets_deadline_exceeded_from_the_router(
        mesh, stub):
    await wait_for_zero(mesh)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await events_of(stub, timeout=LOAD_SECONDS / 3)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The router's answer (why it waited), not the client's own timer.
    assert "scaled to zero" in raised.value.details(), raised.value.details()
    assert error_details(raised.value)["ErrorInfo"].reason == "COLD_START_DEADLINE"
