"""The router against a real control plane and a real sim generation replica, no Envoy:
request ids and deadlines travel, generation's refusals reach the client as generation said
them, a replica dying mid-stream or ending a stream early is reported and counted."""
import asyncio
import sys
import urllib.request
from contextlib import asynccontextmanager

import grpc
import pytest

from deploy.local.mesh import MeshPorts
from deploy.local.supervisor import ManagedProcess, Supervisor
from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from meshllm.errors import details_of
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from meshllm.settings import ServiceSettings
from services.generation.config import GenerationSettings
from services.generation.server import GenerationServicer
from services.generation.sim_engine import SimEngine
from tests.status_details import error_details, violated_fields
from tests.tenant_headers import AsTenant

MODEL = "sim-model"


def python(name: str, module: str, env: dict[str, str]) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-m", module], env=env)


@pytest.fixture(scope="module")
async def router():
    ports = MeshPorts.free()
    supervisor = Supervisor()
    controlplane = f"127.0.0.1:{ports.controlplane}"
    try:
        await supervisor.start(python("controlplane", "services.controlplane", {
            "MESHLLM_CONTROLPLANE_PORT": str(ports.controlplane),
            "MESHLLM_CONTROLPLANE_PUBLIC_PORT": str(ports.public),
            "MESHLLM_CONTROLPLANE_MESH_PORT": str(ports.mesh)}))
        generation = await supervisor.start(python("generation", "services.generation", {
            "MESHLLM_ENGINE": "sim", "MESHLLM_MODEL": MODEL,
            "MESHLLM_GENERATION_REPLICA_ID": "sim-1",
            "MESHLLM_GENERATION_CONTROLPLANE_ADDRESS": controlplane,
            "MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS": "0.01",
            "MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS": "0.05"}))
        # The router talks to the replica directly here: this tests the router, not Envoy.
        router = await supervisor.start(python("router", "services.router", {
            "MESHLLM_ROUTER_MESH_ADDRESS": f"127.0.0.1:{generation.port}",
            "MESHLLM_ROUTER_CONTROLPLANE_ADDRESS": controlplane,
            "MESHLLM_ROUTER_METRICS_PORT": str(ports.admin)}))
        router.metrics_port = ports.admin
        router.generation = generation
        router.controlplane = controlplane
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            router.stub = AsTenant(inference_pb2_grpc.InferenceServiceStub(channel))
            yield router
    finally:
        await supervisor.stop_all(grace=5)


def request(max_tokens: int, **fields) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(prompt="hello", sampling={"max_tokens": max_tokens},
                                         **fields)


async def metrics_text(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


@asynccontextmanager
async def router_in_front_of(replica, replica_id: str, controlplane: str):
    """A router process of its own whose mesh address is `replica`, served in-process and
    registered in `MODEL`'s pool (so the first router's view of the models stays one model).
    Yields the router, with `stub` and `metrics_port` set."""
    server = MeshServer(ServiceSettings(metrics_port=-1), service="generation")
    server.add_service(generation_pb2_grpc.add_GenerationServiceServicer_to_server, replica,
                       "meshllm.generation.v1.GenerationService")
    port = await server.start()
    registration = ReplicaRegistration(controlplane, registry_pb2.Replica(
        replica_id=replica_id, service="generation", host="127.0.0.1", port=port,
        model=MODEL, max_context_tokens=2048))
    supervisor = Supervisor()
    metrics_port = MeshPorts.free().admin
    try:
        await registration.start()
        router = await supervisor.start(python(f"router-{replica_id}", "services.router", {
            "MESHLLM_ROUTER_MESH_ADDRESS": f"127.0.0.1:{port}",
            "MESHLLM_ROUTER_CONTROLPLANE_ADDRESS": controlplane,
            "MESHLLM_ROUTER_METRICS_PORT": str(metrics_port)}))
        router.metrics_port = metrics_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            router.stub = AsTenant(inference_pb2_grpc.InferenceServiceStub(channel))
            yield router
    finally:
        await supervisor.stop_all(grace=5)
        await registration.stop()
        await server.drain(0)


async def test_the_callers_request_id_names_the_stream(router):
    stream = router.stub.Generate(request(2), metadata=(("x-request-id", "req-from-client"),))
    events = [event async for event in stream]
    assert events[0].started.request_id == "req-from-client"
    assert events[0].started.replica == "sim-1"
    assert events[0].started.model == MODEL
    assert "only model" in events[0].started.route_reason


class DeadlineObservingReplica(GenerationServicer):
    """The real servicer on the real sim engine, noting the deadline each call arrives with
    (what `context.time_remaining()` says on the replica: None when the router sent none)."""

    time_remaining_on_arrival: list[float | None]

    @classmethod
    def on_sim(cls) -> "DeadlineObservingReplica":
        replica = cls.for_engine(
            SimEngine(MODEL, time_to_first_token=0.01, inter_token_latency=0.01), "observed-1",
            GenerationSettings())
        replica.time_remaining_on_arrival = []
        return replica

    async def Generate(self, request, context):
        self.time_remaining_on_arrival.append(context.time_remaining())
        async for event in super().Generate(request, context):
            yield event


@pytest.fixture(scope="module")
async def observed(router):
    """A second router whose mesh address is an in-process replica that notes deadlines."""
    replica = DeadlineObservingReplica.on_sim()
    async with router_in_front_of(replica, "observed-1", router.controlplane) as second_router:
        replica.stub = second_router.stub
        yield replica


async def test_the_replica_gets_the_callers_deadline_not_its_own(observed):
    events = [e async for e in observed.stub.Generate(request(2), timeout=5)]
    assert events[-1].WhichOneof("event") == "finished"
    (seen,) = observed.time_remaining_on_arrival
    # What is left of the caller's 5 s once the router has forwarded the call (a replica that
    # got no deadline sees None). gRPC rounds the timeout it puts on the wire up to a coarser
    # unit, so a hop may see a few milliseconds more than its caller had left.
    assert seen is not None and 3.0 < seen < 6.0


async def test_labels_and_an_explicit_model_are_accepted(router):
    events = [e async for e in router.stub.Generate(request(3, model=MODEL, labels={"team": "a"}))]
    assert events[-1].finished.usage.completion_tokens == 3


async def test_a_request_over_the_size_limit_is_resource_exhausted_and_says_the_limit(router):
    huge = inference_pb2.GenerateRequest(prompt="x" * (5 * 1024 * 1024), sampling={"max_tokens": 2})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [event async for event in router.stub.Generate(huge, timeout=10)]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4194304" in caught.value.details()
    events = [event async for event in router.stub.Generate(request(2), timeout=10)]
    assert events[-1].WhichOneof("event") == "finished"


async def test_generations_refusal_reaches_the_client_as_generation_said_it(router):
    # Only the replica can judge this one: the router does not count the prompt's tokens.
    too_long = inference_pb2.GenerateRequest(prompt="hello " * 2000, sampling={"max_tokens": 100})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.generation.port}") as channel:
        replica = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            [e async for e in replica.Generate(generation_pb2.GenerateRequest(
                prompt=too_long.prompt, sampling=too_long.sampling), timeout=10)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [e async for e in router.stub.Generate(too_long, timeout=10)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == direct.value.details()
    details = error_details(caught.value)
    assert violated_fields(details) == ["sampling.max_tokens"]
    assert details["ErrorInfo"].reason == "CONTEXT_EXCEEDED"
    assert details_of(caught.value.trailing_metadata()) == details_of(
        direct.value.trailing_metadata())


class TruncatingReplica(generation_pb2_grpc.GenerationServiceServicer):
    """A replica breaking the stream protocol as no replica of ours does: its stream ends with
    status OK after `started` and one delta, without the `finished` event."""

    async def Generate(self, request, context):
        yield generation_pb2.GenerateResponse(started=generation_pb2.StartedEvent(
            replica_id="truncating-1", model=MODEL, prompt_tokens=1))
        yield generation_pb2.GenerateResponse(delta=inference_pb2.DeltaEvent(
            text="the answer is", token_ids=[1, 2, 3]))


@pytest.fixture(scope="module")
async def truncating(router):
    """A router of its own in front of a TruncatingReplica."""
    async with router_in_front_of(TruncatingReplica(), "truncating-1",
                                  router.controlplane) as truncating_router:
        yield truncating_router


async def test_a_stream_ended_without_finished_is_unavailable_truncated_and_counted(truncating):
    stream = truncating.stub.Generate(request(8), timeout=10)
    started, delta = await stream.read(), await stream.read()
    assert started.started.replica == "truncating-1"
    assert delta.delta.text == "the answer is" and list(delta.delta.token_ids) == [1, 2, 3]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "truncated" in caught.value.details() and "truncating-1" in caught.value.details()
    details = error_details(caught.value)
    assert details["ErrorInfo"].reason == "STREAM_TRUNCATED"
    assert "RetryInfo" in details
    body = await metrics_text(truncating.metrics_port)
    assert f'meshllm_router_midstream_failures_total{{model="{MODEL}"}} 1.0' in body


# Kills the module's generation replica: keep it the last test that needs it.
async def test_a_replica_dying_mid_stream_is_reported_and_counted(router):
    stream = router.stub.Generate(request(200), timeout=30)
    assert (await stream.read()).WhichOneof("event") == "started"
    assert (await stream.read()).WhichOneof("event") == "delta"
    await router.generation.kill()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await stream.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "mid-stream" in caught.value.details() and "sim-1" in caught.value.details()
    body = await metrics_text(router.metrics_port)
    assert f'meshllm_router_midstream_failures_total{{model="{MODEL}"}} 1.0' in body

