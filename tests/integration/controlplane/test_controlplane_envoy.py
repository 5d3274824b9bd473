"""A real Envoy against the control plane: registration to routing, NACK, and outages."""
import asyncio

import grpc
import pytest

from services.controlplane import resources
from services.controlplane.snapshot import CLUSTER, make_snapshot
from tests.integration.controlplane.envoy_mesh import (
    ECHO, GENERATE, GENERATION_SERVICE, Replica, call, eventually,
)


async def test_a_registered_replica_appears_in_envoy_within_two_seconds(mesh):
    echo = await Replica("echo-1", "echo", "meshllm.echo.v1.EchoService").start(
        mesh.controlplane_port)
    mesh.replicas.append(echo)
    await eventually(lambda: echo.port in mesh.endpoints("echo"), timeout=2.0)


async def test_a_call_through_envoy_reaches_the_replica(mesh, channel):
    assert await eventually(lambda: call(channel, ECHO), timeout=2.0) == "echo-1:hi"


async def test_generation_calls_go_to_the_pool_of_the_requested_model(mesh, channel):
    for name, model in [("gen-tiny", "tiny"), ("gen-big", "Org/Big-1.0")]:
        mesh.replicas.append(await Replica(
            name, "generation", GENERATION_SERVICE, model=model,
        ).start(mesh.controlplane_port))
    assert await eventually(lambda: call(channel, GENERATE, "tiny")) == "gen-tiny:hi"
    assert await eventually(lambda: call(channel, GENERATE, "Org/Big-1.0")) == "gen-big:hi"
    assert resources.generation_cluster_name("tiny") in mesh.admin("/clusters")


@pytest.mark.parametrize("model", ["no-such-model", ""])
async def test_a_model_without_a_pool_gets_unimplemented_naming_the_header(channel, model):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, GENERATE, model)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "x-meshllm-model" in raised.value.details()


async def test_deregistration_removes_the_endpoint_from_envoy(mesh, channel):
    echo = mesh.replicas.pop(0)
    await echo.stop()
    await eventually(lambda: echo.port not in mesh.endpoints("echo"), timeout=2.0)
    assert "echo" in mesh.admin("/clusters")  # the pool's cluster stays, with no hosts
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, ECHO)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_rejected_config_is_reported_and_envoy_keeps_serving_the_last_good_one(
        mesh, channel):
    publisher = mesh.controlplane.publisher
    good_build = publisher.build

    def build_with_a_bad_cluster(replicas, pools):
        snapshot = good_build(replicas, pools)
        bad = resources.cluster("bad", mesh.controlplane.settings.envoy_layout())
        bad.connect_timeout.FromNanoseconds(-1_000_000_000)  # Envoy wants a positive one
        by_type = {t: list(r.by_name.values()) for t, r in snapshot.resources.items()}
        by_type[CLUSTER].append(bad)
        return make_snapshot(*by_type.values())

    rejected_before = mesh.stat("cluster_manager.cds.update_rejected")
    publisher.build = build_with_a_bad_cluster
    try:
        publisher.publish()
        nack = await eventually(lambda: [n for n in mesh.callbacks.nacks if n[0] == CLUSTER])
        assert "duration" in nack[-1][2].lower()
        assert mesh.stat("cluster_manager.cds.update_rejected") == rejected_before + 1
        assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
    finally:
        publisher.build = good_build
    good = publisher.publish().of_type(CLUSTER).version
    await eventually(lambda: (CLUSTER, good) in mesh.callbacks.acks)


async def test_envoy_keeps_serving_its_last_config_when_the_control_plane_dies(mesh, channel):
    await mesh.controlplane.stop()
    await asyncio.sleep(0.5)
    assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
    assert mesh.replicas[0].port in mesh.endpoints(resources.generation_cluster_name("tiny"))


async def test_a_restarted_control_plane_waits_for_replicas_before_pushing_endpoints(
        mesh, channel):
    # Same port, as Envoy's bootstrap names it; an empty registry, and Envoy reconnects
    # within its 0.1-1 s back-off. The replicas re-register when their heartbeat says
    # NOT_FOUND. Throughout, the last good endpoints keep serving.
    await mesh.start_controlplane(port=mesh.controlplane_port, grace=3.0)
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.0
    while loop.time() < until:
        assert await call(channel, GENERATE, "tiny") == "gen-tiny:hi"
        await asyncio.sleep(0.1)
    assert {r.name for r in mesh.replicas} <= {
        r.replica_id for r in mesh.controlplane.registry.live()}
