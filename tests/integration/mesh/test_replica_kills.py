"""Replicas killed at random (kill -9: nothing drains, nothing deregisters) under the local
supervisor: Envoy never keeps a dead replica as an endpoint longer than one lease, and the
autoscaler's count brings a new replica in its place. Bounded: three kills, loopback only."""
import asyncio
import random
import time

import pytest

from deploy.local.envoy_admin import admin_get
from tests.integration.mesh.autoscaled import autoscaled_mesh

LEASE_SECONDS = 3.0
# The control plane drops an expired lease within its publisher's tick, and Envoy applies the
# push at once; what remains is loop scheduling on a busy 2-core machine.
SLACK_SECONDS = 2.0
SCALING = """
[pools.default]
min_replicas = 3
max_replicas = 3
"""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    async with autoscaled_mesh(
            tmp_path_factory.mktemp("mesh"), SCALING, generation_replicas=3, model="sim-kills",
            controlplane_env=(("MESHLLM_CONTROLPLANE_LEASE_TTL_SECONDS", str(LEASE_SECONDS)),)
    ) as mesh:
        yield mesh


async def endpoints(mesh) -> set[str]:
    """host:port of every endpoint in every Envoy cluster."""
    _, body = await admin_get(mesh.options.ports.admin, "/clusters")
    return {fields[1] for fields in (line.split("::") for line in body.splitlines())
            if len(fields) >= 3 and fields[2] == "cx_active"}


async def wait_until(condition, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < timeout, f"{what} within {timeout:.0f} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_a_killed_replica_leaves_envoy_within_a_lease_and_is_replaced(mesh):
    chooser = random.Random(15)
    for _ in range(3):
        await wait_until(lambda: healthy_pool(mesh, 3), 60, "the pool was not back to 3")
        victim = chooser.choice(list(mesh.generation.values()))
        address = f"{mesh.options.host}:{victim.port}"
        assert address in await endpoints(mesh)

        await victim.kill()

        async def gone() -> bool:
            return address not in await endpoints(mesh)
        took = await wait_until(gone, 30, f"Envoy still lists the dead {victim.name}")
        assert took <= LEASE_SECONDS + SLACK_SECONDS, f"dead endpoint kept {took:.1f} s"
        await wait_until(lambda: healthy_pool(mesh, 3), 60, "no replica replaced the dead one")
        assert victim.name not in mesh.generation


async def healthy_pool(mesh, count: int) -> bool:
    running = [p for p in mesh.generation.values()
               if p.process is not None and p.process.returncode is None and p.port]
    if len(running) != count:
        return False
    listed = await endpoints(mesh)
    return all(f"{mesh.options.host}:{p.port}" in listed for p in running)
