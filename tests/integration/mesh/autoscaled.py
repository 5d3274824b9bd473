"""A mesh whose replicas the autoscaler drives, with the scaling settings a test gives (the sim
engine unless the test names another)."""
import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc


@asynccontextmanager
async def autoscaled_mesh(workdir: Path, scaling_toml: str, generation_replicas: int,
                          **options):
    """The running mesh: `scaling_toml` as its control plane's settings, the local supervisor
    following them from the start, `options` as further MeshOptions."""
    (workdir / "scaling.toml").write_text(scaling_toml)
    options = {"engine": "sim", **options}
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), workdir=workdir, autoscale=True,
        scaling_config=str(workdir / "scaling.toml"), **options))
    async with mesh.running(generation_replicas=generation_replicas):
        yield mesh


async def pool_status(mesh) -> scaling_pb2.ScaledUnit | None:
    """The generation pool as the autoscaler sees it (the mesh serves one model)."""
    address = f"127.0.0.1:{mesh.options.ports.controlplane}"
    async with grpc.aio.insecure_channel(address) as channel:
        status = await scaling_pb2_grpc.ScalingServiceStub(channel).GetScalingStatus(
            scaling_pb2.GetScalingStatusRequest(), timeout=5)
    return next((unit for unit in status.units if unit.service == "generation"), None)


async def wait_for_zero(mesh, timeout: float = 30.0) -> scaling_pb2.ScaledUnit:
    """Until the pool is scaled to zero: its last replica deregistered (the autoscaler counts
    none ready) and the supervisor stopped it, so no call can reach it any more."""
    deadline = time.monotonic() + timeout
    while True:
        pool = await pool_status(mesh)
        if pool is not None and pool.state == scaling_pb2.SCALING_STATE_SCALED_TO_ZERO \
                and not mesh.generation:
            return pool
        assert time.monotonic() < deadline, f"the pool did not scale to zero: {pool}"
        await asyncio.sleep(0.2)
