"""One whole mesh for the e2e session: control plane, Envoy, router and two generation
replicas running vLLM on the tiny model, on free ports. Engines start once, here."""
import pytest

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(ports=MeshPorts.free(), engine="vllm",
                                 workdir=tmp_path_factory.mktemp("mesh")))
    async with mesh.running(generation_replicas=2):
        yield mesh
