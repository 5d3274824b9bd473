"""Output moderation on the real engine: a block cuts a vLLM stream at the window that holds
the violation and aborts the engine's request.

The tiny model's text is noise, but a seeded sampler makes it repeatable (greedy decoding
gives it nothing but newlines): one tenant reads an
answer unmoderated, a second tenant's policy blocks a piece of that answer's second half, and
the same request under the second policy must stop there, long before its max_tokens."""
import asyncio

import grpc

from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.api_key import bearer, keyed_channel
from tests.e2e.streams import public_stub

PROMPT = "Tell me a story about the sea"


def request(max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        chat={"messages": [{"role": inference_pb2.ROLE_USER, "content": PROMPT}]},
        sampling={"max_tokens": max_tokens, "temperature": 1.0, "seed": 7})


async def tenant_key(channel, tenant_id: str, policy: auth_pb2.Policy) -> str:
    admin = auth_pb2_grpc.AuthServiceStub(channel)
    await admin.CreateTenant(auth_pb2.CreateTenantRequest(tenant_id=tenant_id, policy=policy),
                             timeout=10)
    created = await admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=tenant_id, name="e2e", role=auth_pb2.API_KEY_ROLE_CLIENT), timeout=10)
    return created.secret


def term_from_second_half(text: str) -> str:
    """Six characters of the answer's second half that its first half does not hold."""
    half = len(text) // 2
    for start in range(half, len(text) - 6):
        term = text[start:start + 6]
        if term.strip() == term and term.lower() not in text[:start + 5].lower():
            return term
    raise AssertionError(f"no term to block in {text!r}")


async def test_a_block_cuts_a_vllm_stream_at_its_window_and_the_engine_stops_within_a_second(
        mesh):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as admin:
        reader = await tenant_key(admin, "e2e-unmoderated", auth_pb2.Policy(
            moderation=m.ModerationPolicy(output_disabled=True)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}") as ch:
            answer = [event async for event in public_stub(ch).Generate(
                request(64), metadata=bearer(reader), timeout=120)]
            text = "".join(event.delta.text for event in answer if event.HasField("delta"))
            term = term_from_second_half(text)
            blocked_key = await tenant_key(admin, "e2e-blocklist", auth_pb2.Policy(
                moderation=m.ModerationPolicy(blocklist=[term])))

            events, finished_at = [], None
            async for event in public_stub(ch).Generate(
                    request(1000), metadata=bearer(blocked_key),
                    timeout=120):
                events.append(event)
                if event.HasField("finished"):
                    finished_at = asyncio.get_running_loop().time()
    released = "".join(event.delta.text for event in events if event.HasField("delta"))
    assert term.lower() not in released.lower() and len(released) < len(text)
    moderation = [event.moderation for event in events if event.HasField("moderation")]
    assert [(e.category, e.action) for e in moderation] == [
        (m.CATEGORY_BLOCKLIST, m.ACTION_BLOCK)]
    finished = events[-1].finished
    assert finished.finish_reason == inference_pb2.FINISH_REASON_CONTENT_FILTER
    assert finished.usage.completion_tokens < 200, "the stream ran far past the blocked term"
    replica = mesh.generation[events[0].started.replica]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct:
        load = generation_pb2_grpc.GenerationServiceStub(direct)
        while (await load.GetLoad(generation_pb2.GetLoadRequest())).running_requests:
            assert asyncio.get_running_loop().time() - finished_at < 1.0, \
                "the engine still runs the blocked request 1 s after the stream ended"
            await asyncio.sleep(0.02)
