"""A mesh whose replicas the autoscaler drives, with the scaling settings a test gives (the sim
engine unless the test names another)."""
from contextlib import asynccontextmanager
from pathlib import Path

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts


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
