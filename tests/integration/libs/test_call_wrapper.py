"""What every served call gets from the call wrapper, on a real server: a refusal reaches the
client as its status with google.rpc details, and an unexpected error as INTERNAL naming the
request id, never the error itself."""
import asyncio
import gc
from contextlib import aclosing, asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.errors import ERROR_DOMAIN
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from services.generation.config import GenerationSettings
from services.generation.server import GenerationServicer
from services.generation.sim_engine import SimEngine
from tests.h2_grpc import BlockingReader
from tests.status_details import error_details, violated_fields

SERVICE = "meshllm.generation.v1.GenerationService"
MODEL = "sim-model"


def sim_replica(servicer=GenerationServicer, inter_token_latency: float = 0.01):
    """A generation servicer on the sim engine, wired as `services.generation` wires it, that
    runs one request at a time and lets one more wait."""
    engine = SimEngine(MODEL, max_context_tokens=2048, time_to_first_token=0.01,
                       inter_token_latency=inter_token_latency, max_running_requests=1)
    return servicer.for_engine(engine, "sim-1", GenerationSettings(max_waiting_requests=1))


@asynccontextmanager
async def serving(servicer):
    """`servicer` on a MeshServer on a free port; yields a stub and the channel."""
    server = MeshServer(ServiceSettings(controlplane_address="", metrics_port=-1), service="test")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server, servicer,
                       SERVICE)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield generation_pb2_grpc.GenerationServiceStub(channel), channel
    finally:
        await server.drain(grace_seconds=0)


def prompt(text: str = "hello", max_tokens: int = 4) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(prompt=text, sampling={"max_tokens": max_tokens})


async def events_of(stream) -> list[str]:
    """The kinds of the stream's events, from wherever it has been read to."""
    kinds = []
    while (event := await stream.read()) is not grpc.aio.EOF:
        kinds.append(event.WhichOneof("event"))
    return kinds


BAD_INPUT = [
    ("max_tokens zero", prompt(max_tokens=0), "sampling.max_tokens", "INVALID_INPUT"),
    ("a role not set", generation_pb2.GenerateRequest(
        chat={"messages": [{"content": "hi"}]}, sampling={"max_tokens": 4}),
     "chat.messages[0].role", "INVALID_INPUT"),
    # Judged by the engine, once it has counted the prompt: 2000 words and 100 more tokens.
    ("prompt and completion past the context", prompt("word " * 2000, max_tokens=100),
     "sampling.max_tokens", "CONTEXT_EXCEEDED"),
]


@pytest.mark.parametrize("case, request_, field, reason", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_is_invalid_argument_with_the_field_and_reason_in_its_details(
        case, request_, field, reason):
    async with serving(sim_replica()) as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await events_of(stub.Generate(request_, timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error_details(caught.value)
        assert violated_fields(details) == [field]
        assert details["BadRequest"].field_violations[0].description == caught.value.details()
        assert details["ErrorInfo"].reason == reason
        assert details["ErrorInfo"].domain == ERROR_DOMAIN
        assert "RetryInfo" not in details


async def test_a_burst_past_admission_is_resource_exhausted_with_retry_info_and_the_admitted_finish():
    # One running and one waiting fill the replica; the sim engine yields `started` once a call
    # is admitted, so reading it from both makes the burst that follows land on a full replica.
    async with serving(sim_replica(inter_token_latency=0.05)) as (stub, _):
        admitted = [stub.Generate(prompt(max_tokens=10), timeout=30) for _ in range(2)]
        for stream in admitted:
            assert (await stream.read()).WhichOneof("event") == "started"
        burst = await asyncio.gather(
            *(events_of(stub.Generate(prompt(max_tokens=10), timeout=30)) for _ in range(3)),
            return_exceptions=True)
        for refused in burst:
            assert isinstance(refused, grpc.aio.AioRpcError), refused
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
            assert "full" in refused.details()
            details = error_details(refused)
            assert details["ErrorInfo"].reason == "REPLICA_QUEUE_FULL"
            assert details["RetryInfo"].retry_delay.ToNanoseconds() > 0
        for stream in admitted:
            rest = await events_of(stream)
            assert rest[-1] == "finished" and set(rest[:-1]) == {"delta"}


class FailingReplica(GenerationServicer):
    """The real servicer, with the bugs no handler of ours should have: GetLoad raises, and
    Generate raises after its first event when the prompt asks for it."""

    async def GetLoad(self, request, context):
        raise RuntimeError("secret internals")

    async def Generate(self, request, context):
        async with aclosing(super().Generate(request, context)) as events:
            async for event in events:
                yield event
                if request.prompt == "fail":
                    raise RuntimeError("secret internals")


def assert_internal_naming_only_the_request_id(error: grpc.aio.AioRpcError, request_id: str):
    assert error.code() == grpc.StatusCode.INTERNAL, error.details()
    assert f"request id {request_id}" in error.details()
    # str() holds everything the client got: details, trailers, the debug string.
    assert "secret internals" not in str(error) and "RuntimeError" not in str(error)
    assert error_details(error)["ErrorInfo"].reason == "INTERNAL_ERROR"


async def test_an_unexpected_error_in_a_unary_call_is_internal_naming_the_request_id_not_the_error():
    async with serving(sim_replica(FailingReplica)) as (stub, channel):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetLoad(generation_pb2.GetLoadRequest(), timeout=10,
                               metadata=(("x-request-id", "req-unary-7"),))
        assert_internal_naming_only_the_request_id(caught.value, "req-unary-7")
        events = await events_of(stub.Generate(prompt(), timeout=10))
        assert events[0] == "started" and events[-1] == "finished"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_unexpected_error_mid_stream_is_internal_after_the_events_sent_and_serving_goes_on():
    async with serving(sim_replica(FailingReplica)) as (stub, _):
        stream = stub.Generate(prompt("fail"), timeout=10,
                               metadata=(("x-request-id", "req-stream-8"),))
        assert (await stream.read()).WhichOneof("event") == "started"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert_internal_naming_only_the_request_id(caught.value, "req-stream-8")
        # At full capacity still: one running and one waiting fit at once.
        again = await asyncio.gather(*(events_of(stub.Generate(prompt(), timeout=10))
                                       for _ in range(2)))
        assert [events[-1] for events in again] == ["finished", "finished"]


class CleanupWatchingServicer(generation_pb2_grpc.GenerationServiceServicer):
    """Streams as fast as the transport takes it and notes when its cleanup runs."""

    def __init__(self):
        self.cleaned_up = asyncio.Event()

    async def Generate(self, request, context):
        try:
            while True:
                yield generation_pb2.GenerateResponse(
                    delta={"text": "x" * 512, "token_ids": [1]})
        finally:
            self.cleaned_up.set()


async def test_a_cancel_while_a_write_is_blocked_runs_the_handlers_cleanup_at_once():
    # The garbage collector is off: cleanup that waited for it would never come.
    servicer = CleanupWatchingServicer()
    gc.disable()
    try:
        server = MeshServer(ServiceSettings(controlplane_address="", metrics_port=-1),
                            service="test")
        server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server,
                           servicer, SERVICE)
        port = await server.start()
        reader = BlockingReader("127.0.0.1", port, window=1024)
        await reader.start(f"/{SERVICE}/Generate", prompt().SerializeToString())
        await asyncio.wait_for(reader.wait_for_bytes(1024), 5)
        await asyncio.sleep(0.5)  # the handler is now blocked in a write
        assert not servicer.cleaned_up.is_set()
        await reader.disconnect()
        await asyncio.wait_for(servicer.cleaned_up.wait(), 1)
        await server.drain(grace_seconds=0)
    finally:
        gc.enable()
