"""A request id and a W3C trace travel across two hops of streaming calls."""
import grpc
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.request_context import current_request_id, outgoing_metadata
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from meshllm.tracing import configure_tracing, current_trace_id

SERVICE = "meshllm.generation.v1.GenerationService"


class Downstream(generation_pb2_grpc.GenerationServiceServicer):
    """Answers with the request id and trace id it sees."""

    async def Generate(self, request, context):
        yield generation_pb2.GenerateResponse(
            delta=inference_pb2.DeltaEvent(text=f"{current_request_id()} {current_trace_id()}"))


class Upstream(generation_pb2_grpc.GenerationServiceServicer):
    """Calls Downstream as the router calls generation, then reports both hops' ids."""

    def __init__(self, target: str):
        self._target = target

    async def Generate(self, request, context):
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            async for event in stub.Generate(request, metadata=outgoing_metadata()):
                yield event
        yield generation_pb2.GenerateResponse(
            delta=inference_pb2.DeltaEvent(text=f"{current_request_id()} {current_trace_id()}"))


async def serve(servicer) -> MeshServer:
    server = MeshServer(ServiceSettings(metrics_port=-1), service="test")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server, servicer, SERVICE)
    await server.start()
    return server


async def test_request_id_and_trace_id_reach_the_second_hop():
    configure_tracing("test")  # once per process; a second call keeps the first provider
    downstream = await serve(Downstream())
    upstream = await serve(Upstream(f"127.0.0.1:{downstream.port}"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            events = [e async for e in stub.Generate(generation_pb2.GenerateRequest(), metadata=(
                ("x-request-id", "req-42"),
                ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")))]
    finally:
        await upstream.drain(0)
        await downstream.drain(0)
    second_hop, first_hop = (e.delta.text for e in events)
    assert first_hop == f"req-42 {trace_id}"
    assert second_hop == f"req-42 {trace_id}"
