"""A burst past one replica's admission cap, with a sibling beside it: the cap holds on every
replica at every moment, Envoy's mesh route gives the refused calls to the sibling, and what
no replica can take is RESOURCE_EXHAUSTED with a RetryInfo."""
import asyncio

import grpc
import pytest

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.protos import MODEL_HEADER
from tests.status_details import error_details

MAX_RUNNING, MAX_WAITING = 2, 2
CAP = MAX_RUNNING + MAX_WAITING
MODEL = "sim-burst"


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", model=MODEL,
        workdir=tmp_path_factory.mktemp("mesh"),
        generation_env=(("MESHLLM_GENERATION_MAX_RUNNING_REQUESTS", str(MAX_RUNNING)),
                        ("MESHLLM_GENERATION_MAX_WAITING_REQUESTS", str(MAX_WAITING)),
                        ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.05"),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.02"))))
    async with mesh.running(generation_replicas=2):
        yield mesh


async def watch_waiting(mesh, peaks: dict[str, int], stop: asyncio.Event) -> None:
    """The most requests each replica's engine ever had waiting, polled every 2 ms."""
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}")
                for name, replica in mesh.generation.items()}
    stubs = {name: generation_pb2_grpc.GenerationServiceStub(c) for name, c in channels.items()}
    try:
        while not stop.is_set():
            for name, stub in stubs.items():
                load = await stub.GetLoad(generation_pb2.GetLoadRequest())
                peaks[name] = max(peaks.get(name, 0), load.waiting_requests)
            await asyncio.sleep(0.002)
    finally:
        for channel in channels.values():
            await channel.close()


async def generate(stub) -> str:
    """The replica that served the call, or the refusal."""
    replica = ""
    try:
        async for event in stub.Generate(
                generation_pb2.GenerateRequest(prompt="burst", sampling={"max_tokens": 20}),
                metadata=((MODEL_HEADER, MODEL),), timeout=30):
            replica = replica or event.started.replica_id
        return replica
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        details = error_details(error)
        assert details["ErrorInfo"].reason == "REPLICA_QUEUE_FULL"
        assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
        return "refused"


async def burst(mesh, calls: int) -> tuple[list[str], dict[str, int]]:
    peaks: dict[str, int] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_waiting(mesh, peaks, stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.mesh}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        outcomes = await asyncio.gather(*(generate(stub) for _ in range(calls)))
    stop.set()
    await watcher
    return outcomes, peaks


async def test_twice_one_replicas_cap_is_served_by_the_sibling_and_no_queue_passes_its_cap(mesh):
    outcomes, peaks = await burst(mesh, 2 * CAP)
    assert all(peak <= MAX_WAITING for peak in peaks.values()), peaks
    served = [outcome for outcome in outcomes if outcome != "refused"]
    assert set(served) == set(mesh.generation), outcomes  # both replicas took part
    assert len(served) >= CAP + 1, outcomes  # more than one replica alone could admit


async def test_past_every_replicas_cap_the_rest_is_refused_with_retry_info(mesh):
    outcomes, peaks = await burst(mesh, 4 * CAP)
    assert all(peak <= MAX_WAITING for peak in peaks.values()), peaks
    assert "refused" in outcomes
    assert sum(outcome != "refused" for outcome in outcomes) <= 2 * CAP
