"""The control plane and a real Envoy, once per test module (see envoy_mesh.py)."""
import subprocess

import grpc
import pytest

from services.controlplane.bootstrap import render_bootstrap
from services.controlplane.envoy_binary import envoy_binary_path
from tests.integration.controlplane.envoy_mesh import Mesh, eventually


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = Mesh(tmp_path_factory.mktemp("envoy"))
    await mesh.start_controlplane()
    bootstrap = mesh.tmp_path / "bootstrap.yaml"
    bootstrap.write_text(render_bootstrap("127.0.0.1", mesh.controlplane_port, mesh.admin_port,
                                          node_id="integration"))
    log = open(mesh.tmp_path / "envoy.log", "w")
    envoy = subprocess.Popen(
        [str(envoy_binary_path()), "-c", str(bootstrap), "--use-dynamic-base-id",
         "-l", "warning", "--drain-time-s", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    mesh.replicas = []
    try:
        await eventually(lambda: mesh.stat("listener_manager.lds.update_success") >= 1, 10)
        yield mesh
    finally:
        for replica in mesh.replicas:
            await replica.stop()
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        log.close()
        if mesh.controlplane is not None:
            await mesh.controlplane.stop()


@pytest.fixture(scope="module")
async def channel(mesh):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.mesh_port}") as channel:
        yield channel
