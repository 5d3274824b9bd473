"""The server bootstrap every service uses: health, reflection, malformed input, drain."""
import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings

SERVICE = "meshllm.generation.v1.GenerationService"


class SlowStream(generation_pb2_grpc.GenerationServiceServicer):
    """Streams one delta every 50 ms, so a drain has something in flight to wait for."""

    async def Generate(self, request, context):
        for index in range(request.sampling.max_tokens):
            await asyncio.sleep(0.05)
            yield generation_pb2.GenerateResponse(delta=inference_pb2.DeltaEvent(text=str(index)))


@pytest.fixture
async def server():
    server = MeshServer(ServiceSettings(controlplane_address=""), service="test")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server,
                       SlowStream(), SERVICE)
    await server.start()
    yield server
    await server.drain(grace_seconds=0)


def request(max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(prompt="x", sampling={"max_tokens": max_tokens})


async def test_health_reports_serving_for_the_server_and_each_service(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_registered_service(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))
        async for reply in replies:
            names = {service.name for service in reply.list_services_response.service}
            break
    assert SERVICE in names


async def test_malformed_bytes_get_invalid_argument_and_the_server_keeps_serving(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.unary_stream(f"/{SERVICE}/Generate", request_serializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in raw(b"\xff\xff\xff\x01not a protobuf"):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in caught.value.details()
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        assert len([e async for e in stub.Generate(request(2))]) == 2


async def test_metrics_port_serves_prometheus_text_with_rpc_counts(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        [e async for e in stub.Generate(request(1))]
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'meshllm_grpc_server_handled_total{code="OK",method="/' + SERVICE + '/Generate"}' in body


async def test_drain_lets_an_open_stream_finish_and_refuses_new_calls():
    server = MeshServer(ServiceSettings(controlplane_address=""), service="test")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server,
                       SlowStream(), SERVICE)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        stream = stub.Generate(request(10))
        first = await stream.read()
        assert first.delta.text == "0"
        drain = asyncio.create_task(server.drain(grace_seconds=5))
        rest = []
        while (event := await stream.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert [e.delta.text for e in rest] == [str(i) for i in range(1, 10)]
        await drain
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetLoad(generation_pb2.GetLoadRequest(), timeout=1)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_set_not_serving_turns_health_not_serving_and_calls_still_go_on(server):
    await server.set_not_serving("lease renewal died: RegistrationRefused")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health_stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health_stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        assert len([e async for e in stub.Generate(request(1))]) == 1
