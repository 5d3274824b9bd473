"""KEDA's external-scaler API over real gRPC, answered from a real MeshScaling and registry:
what KEDA sees of a pool at zero, of held and in-flight calls, and of a pool going idle."""
import asyncio

import grpc
import pytest

from meshllm.api.externalscaler import externalscaler_pb2, externalscaler_pb2_grpc
from meshllm.server import MeshServer
from services.controlplane.autoscaling import ScalingSettings
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.keda_scaler import KedaExternalScaler, metric_name
from services.controlplane.registry import Replica, ReplicaRegistry
from tests.fake_clock import FakeClock
from tests.mesh_scaling import mesh_scaling

SERVICES = ScalingSettings(min_replicas=1, max_replicas=2, target_concurrency=64)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def registry(clock):
    return ReplicaRegistry(lease_ttl=600, clock=clock)


@pytest.fixture
def scaling(registry, clock):
    return mesh_scaling(registry, clock, SERVICES, named_pools=("tiny-llama",))


@pytest.fixture
async def scaler(scaling):
    server = MeshServer(ControlPlaneSettings(port=0, metrics_port=-1), service="controlplane")
    server.add_service(externalscaler_pb2_grpc.add_ExternalScalerServicer_to_server,
                       KedaExternalScaler(scaling, poll_seconds=0.01),
                       "externalscaler.ExternalScaler")
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield externalscaler_pb2_grpc.ExternalScalerStub(channel)
    await server.drain(grace_seconds=0.5)


def ref(**metadata) -> externalscaler_pb2.ScaledObjectRef:
    return externalscaler_pb2.ScaledObjectRef(
        name="generation-tiny-llama", namespace="meshllm",
        scalerMetadata=metadata or {"pool": "tiny-llama"})


def run(scaling, clock, seconds: float, step: float = 0.5) -> None:
    for _ in range(int(seconds / step)):
        clock.now += step
        scaling.tick()


def router(registry) -> None:
    registry.register(Replica("router-0", "router", "10.0.0.5", 50051))


async def concurrency(scaler, **metadata) -> float:
    reply = await scaler.GetMetrics(externalscaler_pb2.GetMetricsRequest(
        scaledObjectRef=ref(**metadata), metricName=metric_name(("generation", "tiny-llama"))))
    (value,) = reply.metricValues
    assert value.metricValue == value.metricValueFloat
    return value.metricValueFloat


async def test_a_configured_pool_at_zero_without_demand_is_inactive_at_zero_concurrency(
        scaler, scaling):
    scaling.tick()
    assert not (await scaler.IsActive(ref())).result
    assert await concurrency(scaler) == 0


async def test_the_metric_spec_targets_the_pools_concurrency_per_replica(scaler):
    reply = await scaler.GetMetricSpec(ref())
    (spec,) = reply.metricSpecs
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == (
        "generation-tiny-llama-concurrency", 4.0, 4)


async def test_calls_a_router_holds_for_a_pool_at_zero_make_it_active(
        scaler, scaling, registry):
    router(registry)
    scaling.report("router-0", in_flight=3, held={"tiny-llama": 3})
    scaling.tick()
    assert (await scaler.IsActive(ref())).result
    assert await concurrency(scaler) == 3


async def test_the_metric_is_the_calls_in_flight_on_the_pool_plus_the_calls_held_for_it(
        scaler, scaling, registry):
    router(registry)
    registry.register(Replica("generation-tiny-llama-0", "generation", "10.0.0.7", 50051,
                              model="tiny-llama"))
    scaling.report("generation-tiny-llama-0", in_flight=5, held={})
    scaling.report("router-0", in_flight=7, held={"tiny-llama": 2})
    scaling.tick()
    assert await concurrency(scaler) == 7


async def test_stream_is_active_says_at_once_then_pushes_each_change_as_the_autoscaler_ticks(
        scaler, scaling, registry, clock):
    router(registry)
    scaling.tick()
    stream = scaler.StreamIsActive(ref())
    try:
        assert (await stream.read()).result is False
        scaling.report("router-0", in_flight=1, held={"tiny-llama": 1})
        scaling.tick()
        assert (await asyncio.wait_for(stream.read(), 5)).result is True
        scaling.report("router-0", in_flight=0, held={})
        run(scaling, clock, 3)  # within the idle timeout the pool keeps its replica: no change
        next_message = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.2)  # twenty polls
        assert not next_message.done()
        run(scaling, clock, 12)  # past the stable window and the idle timeout
        assert (await asyncio.wait_for(next_message, 5)).result is False
    finally:
        stream.cancel()


async def test_a_scaled_object_naming_a_pool_the_control_plane_does_not_know_is_not_found(
        scaler):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await scaler.IsActive(ref(pool="no-such-model"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert '[pools."no-such-model"]' in raised.value.details()


async def test_a_generation_trigger_without_a_pool_is_invalid_argument_naming_the_key(scaler):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await scaler.GetMetricSpec(ref(service="generation"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pool: <model>" in raised.value.details()


async def test_another_scaled_unit_is_named_by_its_service(scaler, scaling, registry):
    router(registry)
    scaling.tick()
    assert (await scaler.IsActive(ref(service="router"))).result  # its min_replicas is 1
    (spec,) = (await scaler.GetMetricSpec(ref(service="router"))).metricSpecs
    assert (spec.metricName, spec.targetSizeFloat) == ("router-concurrency", 64.0)


def test_a_metric_name_is_one_kubernetes_accepts_whatever_the_model_is_called():
    assert metric_name(("generation", "Qwen/Qwen2.5-0.5B-Instruct")) == \
        "generation-qwen-qwen2-5-0-5b-instruct-concurrency"


async def test_streamed_metric_specs_are_unimplemented_so_keda_asks_get_metric_spec(scaler):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await scaler.StreamMetricSpec(ref()).read()
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
