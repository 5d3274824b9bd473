"""`make up`'s supervisor: it prints the ready banner, and Ctrl-C or SIGTERM stops every
process it started (vLLM's engine children included), none left behind. The sim engine
keeps this fast; the e2e suite runs the same supervisor on vLLM."""
import asyncio
import os
import signal
import sys

import psutil
import pytest

from deploy.local.mesh import MeshPorts, REPO_ROOT


async def run_until_up(ports: MeshPorts) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "MESHLLM_ENGINE": "sim", "MESHLLM_MODEL": "sim-model",
           "MESHLLM_LOCAL_PUBLIC_PORT": str(ports.public),
           "MESHLLM_LOCAL_MESH_PORT": str(ports.mesh),
           "MESHLLM_LOCAL_ADMIN_PORT": str(ports.admin),
           "MESHLLM_LOCAL_CONTROLPLANE_PORT": str(ports.controlplane),
           "MESHLLM_LOCAL_GENERATION_REPLICAS": "2"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.local", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    banner = ""
    async with asyncio.timeout(120):
        while "Ctrl-C stops everything" not in banner:
            line = await process.stdout.readline()
            assert line, "make up exited before it was up"
            banner += line.decode()
    return process, banner


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_every_process_make_up_started(stop_signal):
    ports = MeshPorts.free()
    process, banner = await run_until_up(ports)
    assert f"localhost:{ports.public}" in banner and "grpcurl" in banner
    started = psutil.Process(process.pid).children(recursive=True)
    assert len(started) >= 5  # control plane, Envoy, router, two replicas
    process.send_signal(stop_signal)
    async with asyncio.timeout(60):
        await process.communicate()
    assert process.returncode == 0
    _, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
