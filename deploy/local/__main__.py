"""make up: the whole mesh in the foreground; Ctrl-C or SIGTERM stops every process."""
import asyncio
import signal

from deploy.local.config import LocalMeshSettings
from deploy.local.mesh import LocalMesh, MeshOptions, REPO_ROOT

GRPCURL = REPO_ROOT / ".venv" / "bin" / "grpcurl"


def ready_banner(options: MeshOptions) -> str:
    endpoint = f"localhost:{options.ports.public}"
    request = ('{"chat":{"messages":[{"role":"ROLE_USER","content":"Hello"}]},'
               '"sampling":{"max_tokens":16}}')
    return (f"\nmeshllm is up: gRPC endpoint {endpoint} (Envoy admin "
            f"http://127.0.0.1:{options.ports.admin}). Try:\n"
            f"  {GRPCURL} -plaintext {endpoint} list\n"
            f"  {GRPCURL} -plaintext -d '{request}' {endpoint} "
            "meshllm.inference.v1.InferenceService/Generate\n"
            "Ctrl-C stops everything.\n")


async def main() -> None:
    settings = LocalMeshSettings()
    options = settings.options()
    mesh = LocalMesh(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(mesh.start(settings.generation_replicas))
    try:
        await asyncio.wait([starting, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            print(ready_banner(options), flush=True)
            await stop.wait()
    finally:
        starting.cancel()
        print("meshllm: stopping every process", flush=True)
        await mesh.stop()


if __name__ == "__main__":
    asyncio.run(main())
