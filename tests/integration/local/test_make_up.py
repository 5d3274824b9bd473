"""`make up`'s supervisor: it prints the ready banner only once the public listener serves real
calls, Ctrl-C or SIGTERM stops every process it started (vLLM's engine children included),
and a port it cannot have ends it with a non-zero exit that names the port and the setting
that moves it, none of its processes left behind. The sim engine keeps this fast; the e2e
suite runs the same supervisor on vLLM."""
import asyncio
import os
import signal
import socket
import sys

import psutil
import pytest

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts, REPO_ROOT
from deploy.local.readiness import MeshNotServing, wait_until_serving


def make_up_env(ports: MeshPorts) -> dict[str, str]:
    return {**os.environ, "MESHLLM_ENGINE": "sim", "MESHLLM_MODEL": "sim-model",
            "MESHLLM_LOCAL_PUBLIC_PORT": str(ports.public),
            "MESHLLM_LOCAL_MESH_PORT": str(ports.mesh),
            "MESHLLM_LOCAL_ADMIN_PORT": str(ports.admin),
            "MESHLLM_LOCAL_CONTROLPLANE_PORT": str(ports.controlplane),
            "MESHLLM_LOCAL_GENERATION_REPLICAS": "2"}


async def make_up(ports: MeshPorts) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.local", cwd=REPO_ROOT, env=make_up_env(ports),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_until_up(ports: MeshPorts) -> tuple[asyncio.subprocess.Process, str]:
    process = await make_up(ports)
    # Nobody reads the processes' output here; drain it so a full pipe never blocks them.
    drain = asyncio.create_task(process.stderr.read())
    banner = ""
    async with asyncio.timeout(120):
        while "Ctrl-C stops everything" not in banner:
            line = await process.stdout.readline()
            assert line, "make up exited before it was up"
            banner += line.decode()
    process.drain = drain
    return process, banner


def processes_of(ports: MeshPorts) -> list[psutil.Process]:
    """Every process that make up on `ports` started: they all inherit its environment, so
    even one whose parent died (and was reparented) is found."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("MESHLLM_LOCAL_ADMIN_PORT") == str(ports.admin):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def taken(port: int) -> socket.socket:
    """Another program listening on `port`, on every address, as a new user's would."""
    holder = socket.socket()
    holder.bind(("0.0.0.0", port))
    holder.listen()
    return holder


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_every_process_make_up_started(stop_signal):
    ports = MeshPorts.free()
    process, banner = await run_until_up(ports)
    assert f"localhost:{ports.public}" in banner and "grpcurl" in banner
    started = psutil.Process(process.pid).children(recursive=True)
    assert len(started) >= 5  # control plane, Envoy, router, two replicas
    process.send_signal(stop_signal)
    async with asyncio.timeout(60):
        await process.wait()
        await process.drain
    assert process.returncode == 0
    _, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left behind: {[p.pid for p in alive]}"


async def test_make_up_with_the_public_port_taken_exits_non_zero_naming_the_port_and_its_setting():
    ports = MeshPorts.free()
    with taken(ports.public):
        process = await make_up(ports)
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
        left = processes_of(ports)
    output = (stdout + stderr).decode()
    assert process.returncode != 0
    assert "is up" not in output.replace("NOT up", "")
    assert f"port {ports.public}" in output and "MESHLLM_LOCAL_PUBLIC_PORT" in output
    assert not left, f"left behind: {[p.cmdline() for p in left]}"


async def test_envoy_rejecting_the_public_listener_is_not_up_and_names_the_port_and_its_setting():
    # The race make up's own check cannot close: the port is taken after the check, so
    # Envoy NACKs its listener ("Address already in use") yet reports itself ready.
    ports = MeshPorts.free()
    mesh = LocalMesh(MeshOptions(ports=ports, engine="sim", model="sim-model"))
    try:
        with taken(ports.public):
            await mesh.start_controlplane()
            await mesh.start_envoy()
            with pytest.raises(MeshNotServing) as caught:
                await wait_until_serving(mesh.options, timeout=30, api_key="")
    finally:
        await mesh.stop()
    message = str(caught.value)
    assert f"port {ports.public}" in message and "MESHLLM_LOCAL_PUBLIC_PORT" in message
    assert "Address already in use" in message
