"""The public API through Envoy, on the real vLLM engine: grpcurl, bad input, Node, cancel."""
import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import grpc
import pytest

from meshllm.api_key import keyed_channel
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from tests.e2e.streams import chat_request, generate, kinds, public_stub
from tests.status_details import error_details, violated_fields

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
GRPCURL = REPO / ".venv" / "bin" / "grpcurl"


def readme_generate_request() -> dict:
    """The -d payload of the README's grpcurl Generate command, so the test runs what users copy."""
    readme = (REPO / "README.md").read_text()
    payload = re.search(r"-d '(\{.*?\})'\s*\\?\s*\n\s*localhost:8080 meshllm\.inference\.v1\."
                        r"InferenceService/Generate", readme, re.S)
    assert payload, "README.md lost its grpcurl Generate command"
    return json.loads(payload.group(1))


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True,
                          timeout=120)


def test_grpcurl_lists_the_public_service_through_envoy_reflection(mesh):
    listed = grpcurl("-H", f"authorization: Bearer {mesh.api_key}",
                     f"127.0.0.1:{mesh.options.ports.public}", "list")
    assert listed.returncode == 0, listed.stderr
    assert "meshllm.inference.v1.InferenceService" in listed.stdout.split()


def test_readme_grpcurl_generate_streams_deltas_then_finished_with_max_tokens(mesh):
    payload = readme_generate_request()
    reply = grpcurl("-H", f"authorization: Bearer {mesh.api_key}", "-d", json.dumps(payload),
                    f"127.0.0.1:{mesh.options.ports.public}",
                    "meshllm.inference.v1.InferenceService/Generate")
    assert reply.returncode == 0, reply.stderr
    events = [json.loads(chunk) for chunk in re.split(r"(?<=\})\n(?=\{)", reply.stdout.strip())]
    names = [next(iter(event)) for event in events]
    assert names[0] == "started" and names[-1] == "finished"
    assert names.count("delta") >= 2
    finished = events[-1]["finished"]
    assert int(finished["usage"]["completion_tokens"]) == payload["sampling"]["max_tokens"]
    assert finished["finish_reason"] == "FINISH_REASON_LENGTH"
    assert events[0]["started"]["route_reason"]


async def test_stream_carries_started_deltas_and_finished_with_usage_and_timings(mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        events = await generate(public_stub(channel), chat_request(max_tokens=6))
    assert kinds(events)[0] == "started" and kinds(events)[-1] == "finished"
    started, finished = events[0].started, events[-1].finished
    assert started.replica in mesh.generation and started.request_id
    # The dev tenant's output is moderated: deltas carry the text, and token ids not at all
    # (they would spell out what a redaction removed).
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert "".join(d.text for d in deltas) and not any(d.token_ids for d in deltas)
    assert finished.usage.completion_tokens == 6
    assert finished.usage.prompt_tokens > 0
    timings = finished.timings
    assert 0 < timings.time_to_first_token.ToNanoseconds() <= timings.total.ToNanoseconds()


BAD_REQUESTS = [
    ("no messages", inference_pb2.GenerateRequest(chat={}, sampling={"max_tokens": 4}),
     grpc.StatusCode.INVALID_ARGUMENT, "chat.messages"),
    ("no input at all", inference_pb2.GenerateRequest(sampling={"max_tokens": 4}),
     grpc.StatusCode.INVALID_ARGUMENT, "no input"),
    ("max_tokens zero", chat_request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens negative", chat_request(max_tokens=-5), grpc.StatusCode.INVALID_ARGUMENT,
     "max_tokens"),
    ("max_tokens beyond context", chat_request(max_tokens=10**6),
     grpc.StatusCode.INVALID_ARGUMENT, "context"),
    ("prompt too long for the context", inference_pb2.GenerateRequest(
        prompt="word " * 5000, sampling={"max_tokens": 4}), grpc.StatusCode.INVALID_ARGUMENT,
     "context"),
    ("unknown model", chat_request(model="no-such-model"), grpc.StatusCode.NOT_FOUND,
     "no-such-model"),
    ("role not set", inference_pb2.GenerateRequest(
        chat={"messages": [{"content": "hi"}]}, sampling={"max_tokens": 4}),
     grpc.StatusCode.INVALID_ARGUMENT, "role"),
]


@pytest.mark.parametrize("case, request_, code, words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_input_gets_a_clear_status_and_the_mesh_keeps_serving(mesh, case, request_,
                                                                        code, words):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        stub = public_stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(stub, request_)
        assert caught.value.code() == code, caught.value.details()
        assert words in caught.value.details()
        assert kinds(await generate(stub, chat_request(max_tokens=2)))[-1] == "finished"


async def test_a_conversation_the_models_chat_template_refuses_reaches_the_client_as_invalid_argument(mesh):
    user = {"role": inference_pb2.ROLE_USER, "content": "hi"}
    two_user_turns = inference_pb2.GenerateRequest(chat={"messages": [user, user]},
                                                   sampling={"max_tokens": 4})
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        stub = public_stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(stub, two_user_turns)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "chat template refused" in caught.value.details()
        assert "roles must alternate" in caught.value.details()
        details = error_details(caught.value)
        assert details["ErrorInfo"].reason == "CHAT_TEMPLATE_REJECTED"
        assert violated_fields(details) == ["chat.messages"]
        assert kinds(await generate(stub, chat_request(max_tokens=2)))[-1] == "finished"


async def test_malformed_request_bytes_get_invalid_argument_through_envoy(mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        raw = channel.unary_stream("/meshllm.inference.v1.InferenceService/Generate",
                                   request_serializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in raw(b"\x0a\xff\xff\xff\x0fgarbage", timeout=10):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in caught.value.details()
        assert kinds(await generate(public_stub(channel), chat_request(max_tokens=2)))[-1] == "finished"


async def test_list_models_names_the_tiny_model_with_its_replicas(mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        reply = await public_stub(channel).ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    (model,) = reply.models
    assert model.name == "tiny-llama" and model.ready_replicas == 2 and model.is_default
    assert model.max_context_tokens > 0


def test_node_client_streams_a_generation_through_envoy(mesh):
    done = subprocess.run(
        ["node", str(Path(__file__).parent / "node" / "generate.js"),
         f"127.0.0.1:{mesh.options.ports.public}", str(REPO / "protos"), "5"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MESHLLM_API_KEY": mesh.api_key})
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events][0] == "started"
    assert sum(e["event"] == "delta" for e in events) >= 2
    assert events[-1]["event"] == "finished"
    assert events[-1]["finished"]["usage"]["completionTokens"] == 5


async def running_stream(channel, mesh):
    """A stream past its first token that the replica is still running, and that replica.

    vLLM's CPU frontend now and then hands a stream's outputs over only once the engine has
    finished it (seen on a direct call to a replica too): such a stream is over by the time
    its first delta arrives, so another is started."""
    for _ in range(5):
        stream = public_stub(channel).Generate(chat_request(max_tokens=1000), timeout=120)
        started = (await stream.read()).started
        assert (await stream.read()).WhichOneof("event") == "delta"
        replica = mesh.generation[started.replica]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct:
            load = await generation_pb2_grpc.GenerationServiceStub(direct).GetLoad(
                generation_pb2.GetLoadRequest())
        if load.running_requests == 1:
            return stream, replica
        stream.cancel()
    pytest.fail("no stream was still running after its first delta in 5 tries")


async def test_cancelling_after_the_first_token_frees_the_engine_within_a_second(mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        stream, replica = await running_stream(channel, mesh)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct:
            load = generation_pb2_grpc.GenerationServiceStub(direct)
            stream.cancel()
            cancelled_at = asyncio.get_running_loop().time()
            while (await load.GetLoad(generation_pb2.GetLoadRequest())).running_requests:
                assert asyncio.get_running_loop().time() - cancelled_at < 1.0, \
                    "the engine still runs the cancelled request after 1 s"
                await asyncio.sleep(0.02)