"""The cold-start hold on its own: a call released to a new replica that Envoy cannot route
to yet is held again, not failed; a failure after the stream started, or one that lasts past
the re-hold bound, reaches the caller. A call the router sent to a pool it thought had
replicas, which just went to zero, is held too."""
import asyncio

import grpc
import pytest

from meshllm.api.inference.v1 import inference_pb2
from meshllm.errors import CallRefused
from services.router.cold_start import ColdStartHold
from services.router.generation_client import NO_REPLICA_REASON
from services.router.model_choice import ModelChoice, ModelPool
from services.router.pipeline import GenerationCall

MODEL = "tiny"
NO_ROUTE_YET = CallRefused(grpc.StatusCode.UNAVAILABLE, "no replica could take the request",
                           reason=NO_REPLICA_REASON, retry_after=1.0)


class OneReadyReplica:
    """A catalog whose pool has just come up from zero."""

    async def pools(self, max_age=None):
        return {MODEL: ModelPool(MODEL, ready_replicas=1, max_context_tokens=2048)}


class ScaledToZeroThenUp:
    """A catalog whose pool is at zero for its next `answers_at_zero` answers, then has a
    replica: the router's view of a pool that went to zero and was asked for."""

    def __init__(self, answers_at_zero: int):
        self.answers_at_zero = answers_at_zero

    async def pools(self, max_age=None):
        self.answers_at_zero -= 1
        if self.answers_at_zero >= 0:
            return {MODEL: ModelPool(MODEL, 0, 0, at_zero=True)}
        return await OneReadyReplica().pools()


def call_for_pool_at_zero(at_zero: bool = True) -> GenerationCall:
    call = GenerationCall(inference_pb2.GenerateRequest(prompt="hi"), "req-1", lambda: None)
    call.model = ModelChoice(ModelPool(MODEL, 0 if at_zero else 1, 0, at_zero=at_zero),
                             "requested")
    return call


class Generation:
    """The next stage: refuses as Envoy would `refusals` times, then streams; `fail_after_start`
    breaks the stream after its started event instead."""

    def __init__(self, refusals: int, fail_after_start: bool = False):
        self.refusals = refusals
        self.fail_after_start = fail_after_start
        self.attempts = 0

    async def __call__(self, call):
        self.attempts += 1
        if self.attempts <= self.refusals:
            raise NO_ROUTE_YET
        yield inference_pb2.GenerateResponse(started=inference_pb2.StartedEvent(replica="g1"))
        if self.fail_after_start:
            raise NO_ROUTE_YET
        yield inference_pb2.GenerateResponse(delta=inference_pb2.DeltaEvent(text="hi"))


def hold(rehold_seconds: float = 10.0) -> ColdStartHold:
    return ColdStartHold(OneReadyReplica(), poll_seconds=0.01, rehold_seconds=rehold_seconds)


async def events_of(stage: ColdStartHold, generation: Generation,
                    at_zero: bool = True) -> list[str]:
    return [event.WhichOneof("event")
            async for event in stage(call_for_pool_at_zero(at_zero), generation)]


async def test_a_call_envoy_cannot_route_yet_is_held_again_and_served():
    stage, generation = hold(), Generation(refusals=3)
    assert await events_of(stage, generation) == ["waiting", "started", "delta"]
    assert generation.attempts == 4
    assert stage.held_calls() == {}


async def test_a_failure_after_the_started_event_is_not_retried():
    stage, generation = hold(), Generation(refusals=0, fail_after_start=True)
    with pytest.raises(CallRefused):
        await events_of(stage, generation)
    assert generation.attempts == 1
    assert stage.held_calls() == {}


async def test_a_replica_envoy_never_routes_to_fails_the_call_after_the_rehold_bound():
    stage, generation = hold(rehold_seconds=0.05), Generation(refusals=10_000)
    with pytest.raises(CallRefused) as refused:
        await events_of(stage, generation)
    assert refused.value.reason == NO_REPLICA_REASON
    assert 2 <= generation.attempts < 100
    assert stage.held_calls() == {}


async def test_a_call_for_a_pool_the_router_thought_up_is_held_when_it_just_went_to_zero():
    stage = ColdStartHold(ScaledToZeroThenUp(answers_at_zero=3), poll_seconds=0.01)
    generation = Generation(refusals=1)
    assert await events_of(stage, generation, at_zero=False) == ["waiting", "started", "delta"]
    assert generation.attempts == 2


async def test_no_replica_for_a_pool_that_is_not_at_zero_reaches_the_caller():
    stage, generation = hold(), Generation(refusals=1)
    with pytest.raises(CallRefused):
        await events_of(stage, generation, at_zero=False)
    assert generation.attempts == 1


async def test_a_pool_with_replicas_streams_through_untouched():
    stage, generation = hold(), Generation(refusals=0)
    assert await events_of(stage, generation, at_zero=False) == ["started", "delta"]


async def test_a_held_call_counts_until_it_is_closed_and_the_bound_refuses_the_next():
    stage = ColdStartHold(ScaledToZeroThenUp(answers_at_zero=10_000), max_held_per_pool=1,
                          poll_seconds=0.01)
    first = stage(call_for_pool_at_zero(), Generation(refusals=0))
    assert (await anext(first)).WhichOneof("event") == "waiting"
    assert stage.held_calls() == {MODEL: 1}
    with pytest.raises(CallRefused) as refused:
        await anext(stage(call_for_pool_at_zero(), Generation(refusals=0)))
    assert refused.value.reason == "COLD_START_QUEUE_FULL"
    await first.aclose()  # the caller went away
    assert stage.held_calls() == {}


async def test_a_call_waiting_for_a_release_slot_is_still_told_it_waits():
    stage = ColdStartHold(OneReadyReplica(), poll_seconds=0.01, waiting_event_seconds=0.02,
                          release_per_replica=1)
    replica_busy = asyncio.Event()

    async def slow_to_start(call):
        await replica_busy.wait()
        yield inference_pb2.GenerateResponse(started=inference_pb2.StartedEvent(replica="g1"))

    first = stage(call_for_pool_at_zero(), slow_to_start)
    assert (await anext(first)).WhichOneof("event") == "waiting"
    taking_the_slot = asyncio.ensure_future(anext(first))  # released; its replica is slow
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(events_of(stage, Generation(refusals=0)))
    await asyncio.sleep(0.15)
    replica_busy.set()
    assert (await taking_the_slot).WhichOneof("event") == "started"
    second_events = await second
    assert second_events[-2:] == ["started", "delta"]
    assert second_events.count("waiting") >= 3  # at once, then every 20 ms for a slot
    await first.aclose()
