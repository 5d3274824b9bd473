import grpc
import pytest

from meshllm.api.inference.v1 import inference_pb2
from services.router.errors import RequestRejected
from services.router.pipeline import GenerationCall, Pipeline
from services.router.checks import check_request


def call_for(**fields) -> GenerationCall:
    return GenerationCall(inference_pb2.GenerateRequest(**fields), "req-1", lambda: None)


async def two_deltas(call):
    for text in ("a", "b"):
        yield inference_pb2.GenerateResponse(delta=inference_pb2.DeltaEvent(text=text))


async def collect(events):
    return [event async for event in events]


async def test_checks_run_first_then_stream_stages_wrap_the_last_one():
    seen = []

    async def tag(call, next_stage):
        seen.append("before")
        async for event in next_stage(call):
            yield inference_pb2.GenerateResponse(
                delta=inference_pb2.DeltaEvent(text=event.delta.text.upper()))
        seen.append("after")

    async def note(call):
        seen.append("check")

    pipeline = Pipeline(checks=[note], last=two_deltas, stream_stages=[tag])
    events = await collect(await pipeline.start(call_for(prompt="hi", sampling={"max_tokens": 2})))
    assert [e.delta.text for e in events] == ["A", "B"]
    assert seen == ["check", "before", "after"]


@pytest.mark.parametrize("fields, words", [
    ({"sampling": {"max_tokens": 4}}, "no input"),
    ({"chat": {}, "sampling": {"max_tokens": 4}}, "chat.messages"),
    ({"chat": {"messages": [{"content": "hi"}]}, "sampling": {"max_tokens": 4}}, "role"),
    ({"prompt": "hi", "sampling": {"max_tokens": 0}}, "max_tokens"),
    ({"prompt": "hi", "sampling": {"max_tokens": -3}}, "max_tokens"),
    ({"prompt": "hi", "sampling": {"max_tokens": 4, "top_p": 0}}, "top_p"),
    ({"prompt": "hi", "sampling": {"max_tokens": 4, "temperature": -1}}, "temperature"),
])
async def test_bad_input_is_refused_before_anything_is_generated(fields, words):
    pipeline = Pipeline(checks=[check_request], last=two_deltas)
    with pytest.raises(RequestRejected) as caught:
        await pipeline.start(call_for(**fields))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.message


async def test_a_refusing_check_stops_the_call_before_later_checks_and_generation():
    ran = []

    async def refuse(call):
        raise RequestRejected(grpc.StatusCode.PERMISSION_DENIED, "not this one")

    async def later_check(call):
        ran.append("later check")

    def generation(call):
        ran.append("generation")
        return two_deltas(call)

    pipeline = Pipeline(checks=[refuse, later_check], last=generation)
    with pytest.raises(RequestRejected) as caught:
        await pipeline.start(call_for(prompt="hi", sampling={"max_tokens": 2}))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert ran == []
