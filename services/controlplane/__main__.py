"""Runs the control plane: `python -m services.controlplane`."""
import asyncio

from meshllm.logging import get_logger
from meshllm.observability import configure_observability
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings

log = get_logger(__name__)


async def serve(settings: ControlPlaneSettings) -> None:
    controlplane = ControlPlane(settings)
    port = await controlplane.start()
    log.info("controlplane_ready", port=port, public_port=settings.public_port,
             mesh_port=settings.mesh_port, admin_port=settings.admin_port,
             lease_ttl_seconds=settings.lease_ttl_seconds,
             reregistration_grace_seconds=settings.eds_grace)
    print(f"READY port={port}", flush=True)
    await controlplane.server.wait_for_shutdown_signal()
    await controlplane.stop()


def main() -> None:
    settings = ControlPlaneSettings()
    configure_observability("controlplane", settings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
