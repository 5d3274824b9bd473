"""A request id and one W3C trace travel across two hops of streaming calls, with a server
span on each hop and a client span for the call between them."""
import asyncio

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.channels import mesh_channel
from meshllm.request_context import current_request_id
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from meshllm.tracing import configure_tracing, current_trace_id

SERVICE = "meshllm.generation.v1.GenerationService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def ids_event() -> generation_pb2.GenerateResponse:
    return generation_pb2.GenerateResponse(
        delta=inference_pb2.DeltaEvent(text=f"{current_request_id()} {current_trace_id()}"))


class Downstream(generation_pb2_grpc.GenerationServiceServicer):
    async def Generate(self, request, context):
        yield ids_event()


class Upstream(generation_pb2_grpc.GenerationServiceServicer):
    """Calls Downstream the way the router calls generation, then reports its own ids."""

    def __init__(self, target: str):
        self._target = target

    async def Generate(self, request, context):
        async with mesh_channel(self._target) as channel:
            async for event in generation_pb2_grpc.GenerationServiceStub(channel).Generate(request):
                yield event
        yield ids_event()


async def serve(servicer) -> MeshServer:
    server = MeshServer(ServiceSettings(metrics_port=-1), service="test")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server, servicer, SERVICE)
    await server.start()
    return server


@pytest.fixture
def finished_spans():
    configure_tracing("test")  # once per process; a later call keeps the first provider
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def test_request_id_and_trace_reach_the_second_hop_with_a_span_per_side(finished_spans):
    downstream = await serve(Downstream())
    upstream = await serve(Upstream(f"127.0.0.1:{downstream.port}"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            events = [e async for e in stub.Generate(generation_pb2.GenerateRequest(), metadata=(
                ("x-request-id", "req-42"),
                ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01")))]
    finally:
        await upstream.drain(0)
        await downstream.drain(0)
    assert [e.delta.text for e in events] == [f"req-42 {TRACE_ID}"] * 2
    await asyncio.sleep(0)  # the client span ends in a task scheduled when its call is done
    spans = [s for s in finished_spans.get_finished_spans()
             if format(s.context.trace_id, "032x") == TRACE_ID]
    by_kind = {(s.kind, s.parent.span_id if s.parent else None): s for s in spans}
    upstream_server = next(s for s in spans if s.kind == SpanKind.SERVER
                           and s.parent.span_id == 0x00f067aa0ba902b7)
    client = by_kind[(SpanKind.CLIENT, upstream_server.context.span_id)]
    downstream_server = by_kind[(SpanKind.SERVER, client.context.span_id)]
    assert client.name == downstream_server.name == f"{SERVICE}/Generate"
    assert client.attributes["rpc.grpc.status_code"] == "OK"
