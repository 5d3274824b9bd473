"""python -m services.router: the public API, forwarding to generation through Envoy."""
import asyncio

from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.api.inference.v1 import inference_pb2_grpc
from meshllm.channels import mesh_channel
from meshllm.observability import configure_observability
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from services.router.config import RouterSettings
from services.router.generation_client import GenerationClient
from services.router.model_catalog import ModelCatalog
from services.router.pipeline import Pipeline
from services.router.server import InferenceServicer
from services.router.checks import ChooseModel, check_request, check_tenant_policy
from services.router.cold_start import ColdStartHold
from services.router.grounding import Grounding
from services.router.metering import Metering, Settlements
from services.router.moderation import Moderation
from services.router.moderation_client import ModerationClient
from services.router.retrieval_client import RetrievalClient


async def main(settings: RouterSettings) -> None:
    # The stream path carries its context itself (GenerationClient): no interceptors there.
    mesh = mesh_channel(settings.mesh_address, intercepted=False)
    controlplane = mesh_channel(settings.controlplane_address)
    catalog = ModelCatalog(controlplane, settings.catalog_refresh_seconds,
                           settings.catalog_forget_after_seconds)
    # Reserve and Settle are unary calls off the token path: the intercepted channel carries
    # the request id and trace for them.
    accounting = mesh_channel(settings.mesh_address)
    settlements = Settlements(accounting)
    registration: ReplicaRegistration | None = None

    def report_held_calls_now() -> None:
        if registration is not None:
            registration.report_now()

    hold = ColdStartHold(catalog, settings.max_held_calls_per_pool,
                         settings.waiting_event_seconds, on_first_held=report_held_calls_now)
    pipeline = Pipeline(
        checks=[check_request, ChooseModel(catalog, settings.default_model),
                check_tenant_policy],
        # Moderation first: a call whose input is blocked waits for no cold start and holds
        # no budget; its output is judged after generation and metering saw every token.
        # Grounding next: it searches with the input as moderation left it.
        stream_stages=[Moderation(ModerationClient(mesh, settings.moderation_timeout_seconds)),
                       Grounding(RetrievalClient(mesh, settings.retrieval_timeout_seconds)),
                       hold, Metering(accounting, settlements)],
        last=GenerationClient(mesh))
    server = MeshServer(settings, service="router")
    server.add_service(inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                       InferenceServicer(pipeline, catalog, settings.default_model),
                       "meshllm.inference.v1.InferenceService")
    port = await server.start()
    registration = ReplicaRegistration(settings.controlplane_address, registry_pb2.Replica(
        replica_id=settings.replica_id or f"router-{settings.host}-{port}",
        service="router", host=settings.host, port=port),
        on_renewal_died=server.set_not_serving, held_calls=hold.held_calls)
    await registration.start()
    print(f"READY port={port}", flush=True)
    await server.wait_for_shutdown_signal()
    await registration.stop()
    await server.drain()
    await settlements.drain(settings.drain_grace_seconds)
    await accounting.close()
    await mesh.close()
    await controlplane.close()


if __name__ == "__main__":
    settings = RouterSettings()
    configure_observability("router", settings)
    asyncio.run(main(settings))
