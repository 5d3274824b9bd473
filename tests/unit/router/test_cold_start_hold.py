"""The cold-start hold on its own: a call released to a new replica that Envoy cannot route
to yet is held again, not failed; a failure after the stream started, or one that lasts past
the re-hold bound, reaches the caller."""
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


def call_for_pool_at_zero() -> GenerationCall:
    call = GenerationCall(inference_pb2.GenerateRequest(prompt="hi"), "req-1", lambda: None)
    call.model = ModelChoice(ModelPool(MODEL, 0, 0, at_zero=True), "requested")
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


async def events_of(stage: ColdStartHold, generation: Generation) -> list[str]:
    return [event.WhichOneof("event")
            async for event in stage(call_for_pool_at_zero(), generation)]


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
