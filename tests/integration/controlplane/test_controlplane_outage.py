"""The control plane crashes, stays away 15 s (past what grpc's default reconnect back-off
would tolerate) and comes back: every call during and after succeeds, and Envoy's endpoint
sets never shrink, let alone empty.

Real processes on loopback: control plane, Envoy, router and two generation replicas on the
sim engine (the mesh's own behaviour is under test, not the model's)."""
import asyncio
from collections import defaultdict

import grpc
import pytest

from deploy.local.envoy_admin import cluster_endpoints, stat
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api_key import keyed_channel
from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.resources import ROUTER_CLUSTER, generation_cluster_name

MODEL = "sim-model"
OUTAGE_SECONDS = 15.0
CLUSTERS = (ROUTER_CLUSTER, generation_cluster_name(MODEL))


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(ports=MeshPorts.free(), engine="sim", model=MODEL,
                                 workdir=tmp_path_factory.mktemp("outage")))
    async with mesh.running(generation_replicas=2):
        yield mesh


async def watch_endpoints(admin_port: int, seen: dict[str, list[int]],
                          stop: asyncio.Event) -> None:
    """Records the size of each cluster's endpoint set, every 50 ms, until `stop`."""
    while not stop.is_set():
        for cluster in CLUSTERS:
            seen[cluster].append(len(await cluster_endpoints(admin_port, cluster)))
        await asyncio.sleep(0.05)


async def call_once(stub, outcomes: list[str]) -> None:
    """One short chat; records "ok" or the failure."""
    request = inference_pb2.GenerateRequest(
        chat={"messages": [{"role": inference_pb2.ROLE_USER, "content": "Hello"}]},
        sampling={"max_tokens": 4})
    try:
        events = [event async for event in stub.Generate(request, timeout=10)]
        kind = events[-1].WhichOneof("event") if events else "nothing"
        outcomes.append("ok" if kind == "finished" else f"ended with {kind}")
    except grpc.aio.AioRpcError as error:
        outcomes.append(f"{error.code().name}: {error.details()}")


async def call_until(stub, stop: asyncio.Event, outcomes: list[str]) -> None:
    while not stop.is_set():
        await call_once(stub, outcomes)


async def registered(controlplane_port: int) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{controlplane_port}") as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).ListReplicas(
            registry_pb2.ListReplicasRequest(), timeout=2)
    return {replica.service for replica in reply.replicas}, len(reply.replicas)


async def test_a_control_plane_away_15_s_never_costs_a_call_or_an_endpoint(mesh):
    ports = mesh.options.ports  # mesh.start waited until Envoy routes to every process
    full = {ROUTER_CLUSTER: 1, generation_cluster_name(MODEL): 2}
    changes_before = {c: await stat(ports.admin, f"cluster.{c}.membership_change")
                      for c in CLUSTERS}
    stop, seen, outcomes = asyncio.Event(), defaultdict(list), []
    async with keyed_channel(f"127.0.0.1:{ports.public}", mesh.api_key) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        # The router learns the models from the registry (once a second): wait until it has.
        while not outcomes or outcomes[-1] != "ok":
            outcomes.clear()
            await call_once(stub, outcomes)
            await asyncio.sleep(0.1)
        outcomes.clear()
        background = [asyncio.create_task(watch_endpoints(ports.admin, seen, stop)),
                      *(asyncio.create_task(call_until(stub, stop, outcomes)) for _ in range(3))]
        try:
            await mesh.controlplane.kill()  # a crash: nothing drains, nothing is said
            await asyncio.sleep(OUTAGE_SECONDS)
            calls_during_outage = len(outcomes)
            await mesh.start_controlplane()
            # Every replica registers again within a heartbeat and the bounded back-off...
            while await registered(ports.controlplane) != (
                    {"router", "generation", "auth", "moderation"}, 5):
                await asyncio.sleep(0.1)
            # ...and Envoy, reconnected, is past the re-registration grace: it has been sent
            # (or found it already had) the restarted control plane's endpoints.
            await asyncio.sleep(ControlPlaneSettings().eds_grace + 1.0)
            assert await stat(ports.admin, "control_plane.connected_state") == 1
        finally:
            stop.set()
            await asyncio.gather(*background)
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} calls failed: {failures[:5]}"
    assert calls_during_outage > 10 and len(outcomes) > calls_during_outage
    for cluster, size in full.items():
        assert min(seen[cluster]) == size, f"{cluster} endpoint counts seen: {set(seen[cluster])}"
        assert await stat(ports.admin, f"cluster.{cluster}.membership_change") == (
            changes_before[cluster]), f"{cluster}'s endpoints changed"
