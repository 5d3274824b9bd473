"""The sim engine: deterministic text, real accounting, aborts that free the slot."""
import asyncio

import pytest

from services.generation.engine import (
    ChatTurn,
    Delta,
    ErrorCode,
    Finished,
    FinishReason,
    GenerationError,
    GenerationRequest,
    Started,
)
from services.generation.sim_engine import SimEngine


def engine(**overrides) -> SimEngine:
    settings = dict(model_name="sim", time_to_first_token=0.0, inter_token_latency=0.0)
    return SimEngine(**{**settings, **overrides})


def request(max_tokens=5, request_id="r1", **fields) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, messages=(ChatTurn("user", "hello there"),),
        max_tokens=max_tokens, **fields,
    )


async def collect(sim: SimEngine, req: GenerationRequest) -> list:
    return [step async for step in sim.generate(req)]


async def test_a_caller_that_keeps_up_gets_one_delta_per_token_then_finished():
    steps = await collect(engine(inter_token_latency=0.02), request(max_tokens=5))
    assert isinstance(steps[0], Started) and steps[0].prompt_tokens > 0
    assert [type(s) for s in steps[1:-1]] == [Delta] * 5
    finished = steps[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason is FinishReason.LENGTH
    assert finished.completion_tokens == 5
    assert finished.prompt_tokens == steps[0].prompt_tokens


async def test_a_caller_that_comes_back_late_gets_every_token_due_meanwhile_in_one_delta():
    sim = engine(inter_token_latency=0.005)
    stream = sim.generate(request(max_tokens=40))
    await anext(stream)  # started
    first = await anext(stream)
    await asyncio.sleep(0.05)  # about ten tokens fall due while nobody reads
    gathered = await anext(stream)
    assert len(first.token_ids) == 1
    assert 5 <= len(gathered.token_ids) <= 40
    assert len(gathered.text.split()) == len(gathered.token_ids)
    rest = [step async for step in stream]
    assert rest[-1].completion_tokens == 40
    tokens = 1 + len(gathered.token_ids) + sum(len(s.token_ids) for s in rest[:-1])
    assert tokens == 40


async def test_requests_past_max_running_wait_and_are_counted_as_waiting():
    sim = engine(inter_token_latency=0.01, max_running_requests=1)
    first, second = sim.generate(request(max_tokens=50)), sim.generate(request(max_tokens=5))
    await anext(first), await anext(first)  # started, then running
    await anext(second)  # started: accepted, now queued behind the first
    queued = asyncio.create_task(anext(second))
    await asyncio.sleep(0.03)
    assert not queued.done()
    assert (sim.load().running, sim.load().waiting) == (1, 1)
    await first.aclose()
    assert isinstance(await asyncio.wait_for(queued, 1), Delta)
    assert (sim.load().running, sim.load().waiting) == (1, 0)
    await second.aclose()


async def test_text_is_deterministic():
    first = "".join(s.text for s in await collect(engine(), request()) if isinstance(s, Delta))
    again = "".join(s.text for s in await collect(engine(), request()) if isinstance(s, Delta))
    assert first == again and first


async def test_another_model_is_refused_before_anything_is_streamed():
    with pytest.raises(GenerationError) as caught:
        await collect(engine(), request(max_tokens=4, model="another-model"))
    assert caught.value.code is ErrorCode.NOT_FOUND


async def test_prompt_too_long_for_the_context_is_invalid():
    sim = engine(max_context_tokens=64)
    long = GenerationRequest(request_id="r", prompt="word " * 100, max_tokens=4)
    with pytest.raises(GenerationError) as caught:
        await collect(sim, long)
    assert "100 tokens" in caught.value.message


async def test_running_count_follows_streams_and_drops_on_cancel():
    sim = engine(inter_token_latency=0.01)
    first_delta = asyncio.Event()

    async def consume():
        async for step in sim.generate(request(max_tokens=2000)):
            if isinstance(step, Delta):
                first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    load = sim.load()
    assert load.running == 1 and load.kv_cache_usage > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sim.load().running == 0
    assert sim.load().kv_cache_usage == 0


async def test_shutdown_finishes_open_streams_as_aborted():
    sim = engine(inter_token_latency=0.01)
    steps = []
    async for step in sim.generate(request(max_tokens=2000)):
        steps.append(step)
        if isinstance(step, Delta):
            await sim.shutdown()
    assert steps[-1].finish_reason is FinishReason.ABORTED
    assert steps[-1].completion_tokens == 1
    assert sim.load().running == 0


async def test_closing_the_stream_early_frees_the_slot():
    sim = engine()
    stream = sim.generate(request(max_tokens=100))
    await anext(stream)
    await anext(stream)
    assert sim.load().running == 1
    await stream.aclose()
    assert sim.load().running == 0
