"""python -m services.moderation: input and output moderation for the router, on the mesh
listener; the verdict trail's API for admins, on the public one."""
import asyncio

from meshllm.api.moderation.v1 import moderation_pb2_grpc
from meshllm.logging import get_logger
from meshllm.observability import configure_observability
from meshllm.registration import register_server
from meshllm.server import MeshServer
from services.moderation.audit_service import AuditServicer
from meshllm.audit_signing import AuditSigner
from services.moderation.audit_store import AuditStore
from services.moderation.audit_writer import AuditWriter
from services.moderation.classifier_queue import ClassifierQueue
from services.moderation.config import ModerationSettings
from services.moderation.detectors.detection import RuleDetectors
from services.moderation.moderator import Moderator
from services.moderation.server import ModerationServicer

log = get_logger(__name__)


def load_classifier(settings: ModerationSettings) -> ClassifierQueue | None:
    if not settings.classifier:
        return None
    import torch

    from meshllm.sentence_embeddings import default_model_path
    from services.moderation.detectors.classifier import ExemplarClassifier

    # The classifier shares the machine with the engine and every other service: it gets
    # the threads it is given, not all of them.
    torch.set_num_threads(settings.torch_threads)
    model = settings.classifier_model or default_model_path()
    return ClassifierQueue(ExemplarClassifier(model))


async def main(settings: ModerationSettings) -> None:
    signer = AuditSigner.from_file(settings.audit_signing_key)
    store = await AuditStore.open(
        settings.audit_database, signer,
        checkpoint_every_records=settings.audit_checkpoint_records,
        checkpoint_every_seconds=settings.audit_checkpoint_seconds)
    audit = AuditWriter(store, idle_checkpoint_seconds=settings.audit_checkpoint_seconds)
    audit.start()
    classifier = await asyncio.to_thread(load_classifier, settings)
    moderator = Moderator(RuleDetectors().find, classifier, settings.classify_all_output)
    server = MeshServer(settings, service="moderation")
    server.add_service(moderation_pb2_grpc.add_ModerationServiceServicer_to_server,
                       ModerationServicer(moderator, audit, settings),
                       "meshllm.moderation.v1.ModerationService")
    server.add_service(moderation_pb2_grpc.add_AuditServiceServicer_to_server,
                       AuditServicer(store, signer.public_key_bytes),
                       "meshllm.moderation.v1.AuditService")
    port = await server.start()
    registration = await register_server(server, settings.replica_id)
    print(f"READY port={port}", flush=True)
    await server.wait_for_shutdown_signal()
    if registration is not None:
        await registration.stop()
    await server.drain()
    if classifier is not None:
        await classifier.close()
    await audit.drain()
    await store.close()


if __name__ == "__main__":
    settings = ModerationSettings()
    configure_observability("moderation", settings)
    asyncio.run(main(settings))
