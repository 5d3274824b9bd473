"""A real generation replica: vLLM on the tiny model behind the GenerationService."""
import asyncio

import grpc
import pytest

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from tests.status_details import error_details, violated_fields

USER = inference_pb2.ROLE_USER
ROLES = {"system": inference_pb2.ROLE_SYSTEM, "user": USER,
         "assistant": inference_pb2.ROLE_ASSISTANT}


def chat_request(max_tokens: int, **fields) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        chat=inference_pb2.Conversation(
            messages=[inference_pb2.ChatMessage(role=USER, content="Tell me about the mesh.")]
        ),
        sampling=inference_pb2.SamplingParams(max_tokens=max_tokens),
        **fields,
    )


@pytest.fixture
async def stub(generation_replica):
    async with grpc.aio.insecure_channel(generation_replica) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


async def events_of(stub, request) -> list:
    return [event async for event in stub.Generate(request, timeout=60)]


async def test_a_stream_is_started_then_deltas_then_finished_with_exactly_max_tokens(stub):
    events = await events_of(stub, chat_request(max_tokens=16, request_id="full-stream"))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("delta") >= 2 and set(kinds[1:-1]) == {"delta"}
    started, finished = events[0].started, events[-1].finished
    assert started.model == "tiny-llama" and started.replica_id and started.prompt_tokens > 0
    assert finished.usage.completion_tokens == 16
    assert finished.usage.prompt_tokens == started.prompt_tokens
    assert sum(len(event.delta.token_ids) for event in events[1:-1]) == 16
    assert finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    timings = finished.timings
    assert timings.time_to_first_token.ToNanoseconds() > 0
    assert timings.total.ToNanoseconds() >= timings.time_to_first_token.ToNanoseconds()


async def test_a_raw_prompt_streams_too(stub):
    request = generation_pb2.GenerateRequest(
        prompt="the quick brown fox", sampling=inference_pb2.SamplingParams(max_tokens=3, temperature=0)
    )
    events = await events_of(stub, request)
    assert events[-1].finished.usage.completion_tokens == 3


async def test_cancelling_after_the_first_token_frees_the_engine_within_a_second(stub):
    call = stub.Generate(chat_request(max_tokens=2000, request_id="cancel-me"), timeout=60)
    seen = []
    async for event in call:
        seen.append(event.WhichOneof("event"))
        if seen[-1] == "delta":
            break
    assert seen == ["started", "delta"]
    assert (await stub.GetLoad(generation_pb2.GetLoadRequest())).running_requests == 1
    call.cancel()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    load = await stub.GetLoad(generation_pb2.GetLoadRequest())
    while load.running_requests and loop.time() < deadline:
        await asyncio.sleep(0.05)
        load = await stub.GetLoad(generation_pb2.GetLoadRequest())
    assert load.running_requests == 0
    assert load.waiting_requests == 0


LONG_PROMPT = "the mesh streams tokens " * 600  # well over 2048 tokens


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (generation_pb2.GenerateRequest(chat=inference_pb2.Conversation(),
                                        sampling=inference_pb2.SamplingParams(max_tokens=4)),
         grpc.StatusCode.INVALID_ARGUMENT, "at least one message"),
        (chat_request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "got 0"),
        (chat_request(max_tokens=-5), grpc.StatusCode.INVALID_ARGUMENT, "got -5"),
        (chat_request(max_tokens=5000), grpc.StatusCode.INVALID_ARGUMENT, "2048"),
        (chat_request(max_tokens=2040), grpc.StatusCode.INVALID_ARGUMENT, "lower max_tokens"),
        (chat_request(max_tokens=4, model="llama-405b"), grpc.StatusCode.NOT_FOUND, "tiny-llama"),
        (generation_pb2.GenerateRequest(prompt=LONG_PROMPT,
                                        sampling=inference_pb2.SamplingParams(max_tokens=4)),
         grpc.StatusCode.INVALID_ARGUMENT, "shorten the prompt"),
    ],
    ids=["no-messages", "zero-max-tokens", "negative-max-tokens", "max-tokens-beyond-context",
         "prompt-plus-max-tokens-beyond-context", "unknown-model", "prompt-too-long"],
)
async def test_bad_input_gets_a_clear_status_and_the_replica_keeps_serving(stub, request_, code, words):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events_of(stub, request_)
    assert caught.value.code() == code
    assert words in caught.value.details()

    events = await events_of(stub, chat_request(max_tokens=2))
    assert events[-1].finished.usage.completion_tokens == 2


def conversation(*roles: str, max_tokens: int = 2) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        chat={"messages": [{"role": ROLES[role], "content": f"a {role} turn"} for role in roles]},
        sampling={"max_tokens": max_tokens})


# The tiny model's chat template refuses these, as Llama 2's and Mistral's do.
REFUSED_CONVERSATIONS = [
    (("user", "user"), "roles must alternate"),
    (("system", "user", "user", "assistant"), "roles must alternate"),
    (("user", "system"), "system message is only allowed first"),
]


@pytest.mark.parametrize("roles, words", REFUSED_CONVERSATIONS,
                         ids=["-".join(roles) for roles, _ in REFUSED_CONVERSATIONS])
async def test_a_conversation_the_chat_template_refuses_is_invalid_argument_and_the_replica_keeps_serving(
        stub, roles, words):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events_of(stub, conversation(*roles))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("the model's chat template refused the conversation")
    assert words in caught.value.details()
    details = error_details(caught.value)
    assert details["ErrorInfo"].reason == "CHAT_TEMPLATE_REJECTED"
    assert violated_fields(details) == ["chat.messages"]

    events = await events_of(stub, conversation("system", "user", "assistant", "user"))
    assert events[-1].finished.usage.completion_tokens == 2


async def test_get_load_describes_the_replica(stub):
    load = await stub.GetLoad(generation_pb2.GetLoadRequest())
    assert load.model == "tiny-llama"
    assert load.max_context_tokens == 2048
    assert load.replica_id.startswith("generation-")
    assert 0.0 <= load.kv_cache_usage <= 1.0


async def test_cancelling_one_stream_leaves_another_with_the_same_request_id_running(stub):
    keeper = asyncio.create_task(events_of(stub, chat_request(max_tokens=200, request_id="same")))
    doomed = stub.Generate(chat_request(max_tokens=2000, request_id="same"), timeout=60)
    async for event in doomed:
        if event.WhichOneof("event") == "delta":
            break
    doomed.cancel()
    events = await keeper
    assert events[-1].finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert events[-1].finished.usage.completion_tokens == 200
