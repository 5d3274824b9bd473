"""make up: the whole mesh in the foreground; Ctrl-C or SIGTERM stops every process.

It says the mesh is up only once a real call through the public listener works, and it
exits non-zero, leaving no process behind, when the mesh cannot serve (a port in use, a
process that does not start)."""
import asyncio
import signal
import sys

from deploy.local.config import LocalMeshSettings
from deploy.local.mesh import LocalMesh, MeshOptions, REPO_ROOT
from deploy.local.ports import PortsUnavailable, check_ports_free
from deploy.local.readiness import MeshNotServing, wait_until_serving

GRPCURL = REPO_ROOT / ".venv" / "bin" / "grpcurl"


def ready_banner(options: MeshOptions, api_key: str) -> str:
    endpoint = f"localhost:{options.ports.public}"
    request = ('{"chat":{"messages":[{"role":"ROLE_USER","content":"Hello"}]},'
               '"sampling":{"max_tokens":16}}')
    key_header = '-H "authorization: Bearer $MESHLLM_API_KEY"'
    return (f"\nmeshllm is up: gRPC endpoint {endpoint} (Envoy admin "
            f"http://127.0.0.1:{options.ports.admin}).\n"
            f"API key of the local tenant 'dev' (admin; kept in "
            f"{options.workdir / 'dev-api-key'}):\n"
            f"  export MESHLLM_API_KEY={api_key}\n"
            "Try:\n"
            f"  {GRPCURL} -plaintext {key_header} {endpoint} list\n"
            f"  {GRPCURL} -plaintext {key_header} -d '{request}' {endpoint} "
            "meshllm.inference.v1.InferenceService/Generate\n"
            "  (answers grounded in your own documents: meshllm.retrieval.v1.RetrievalService, "
            "README.md and docs/retrieval.md)\n"
            f"  {REPO_ROOT / '.venv' / 'bin' / 'meshllm'} admin tenants list\n"
            f"  {REPO_ROOT / '.venv' / 'bin' / 'meshllm'} audit verify   "
            "(the moderation verdict trail)\n"
            f"  {REPO_ROOT / '.venv' / 'bin' / 'meshllm'} --controlplane "
            f"localhost:{options.ports.controlplane} status\n"
            "Ctrl-C stops everything.\n")


def refuse(reason: str) -> int:
    print(f"\nmeshllm is NOT up: {reason}", file=sys.stderr, flush=True)
    return 1


async def bring_up(mesh: LocalMesh, settings: LocalMeshSettings) -> None:
    await mesh.start(settings.generation_replicas)
    await wait_until_serving(mesh.options, settings.ready_timeout_seconds, mesh.api_key)


async def main() -> int:
    """0 after a stop signal; 1 when the mesh could not be brought up."""
    settings = LocalMeshSettings()
    options = settings.options()
    try:
        check_ports_free(options.host, options.ports)
    except PortsUnavailable as error:
        return refuse(str(error))
    mesh = LocalMesh(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(bring_up(mesh, settings))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            return 0  # stopped by the user before it was up
        try:
            starting.result()
        except (MeshNotServing, RuntimeError) as error:
            # RuntimeError: a process that did not become ready (ManagedProcess.start).
            return refuse(str(error))
        print(ready_banner(options, mesh.api_key), flush=True)
        await stop.wait()
        return 0
    finally:
        starting.cancel()
        stopping.cancel()
        # Let a cancelled start finish unwinding first, so stop_all sees every process.
        await asyncio.wait([starting, stopping])
        print("meshllm: stopping every process", flush=True)
        await mesh.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
