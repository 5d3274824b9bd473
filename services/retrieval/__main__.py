"""python -m services.retrieval: tenants' collections, ingestion and search; public (behind
ext_authz) and on the mesh listener, where the router searches for grounded generations."""
import asyncio

from meshllm.api.retrieval.v1 import retrieval_pb2_grpc
from meshllm.observability import configure_observability
from meshllm.registration import register_server
from meshllm.sentence_embeddings import MODEL_NAME
from meshllm.server import MeshServer
from services.retrieval.catalog import CollectionCatalog
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedding_worker import EmbeddingWorker
from services.retrieval.index_maintenance import IndexMaintenance
from services.retrieval.server import RetrievalServicer
from services.retrieval.store import VectorStore
from services.retrieval.validation import MAX_CHUNK_TOKENS


def open_store(settings: RetrievalSettings) -> VectorStore:
    if settings.store == "milvus":
        from services.retrieval.stores.milvus_store import MilvusStore

        return MilvusStore(settings.milvus_uri, settings.milvus_token)
    from services.retrieval.stores.lance_store import LanceStore

    return LanceStore(settings.lance_directory)


def load_embedder(settings: RetrievalSettings) -> EmbeddingWorker:
    import torch

    from meshllm.sentence_embeddings import SentenceEncoder, default_model_path

    # The model shares the machine with the engine and every other service: it gets the
    # threads it is given, not all of them.
    torch.set_num_threads(settings.torch_threads)
    model = settings.embedding_model or default_model_path()
    return EmbeddingWorker(SentenceEncoder(model, MAX_CHUNK_TOKENS, settings.embedding_cache_size))


def retrieval_server(settings: RetrievalSettings, store: VectorStore,
                     embedder: EmbeddingWorker) -> tuple[MeshServer, IndexMaintenance]:
    """The server with the RetrievalService on it (not started), and the index maintenance
    it feeds (stop it after the drain)."""
    maintenance = IndexMaintenance(store)
    catalog = CollectionCatalog(store, settings.embedding_model or MODEL_NAME, embedder.dimension,
                                settings.catalog_cache_seconds)
    server = MeshServer(settings, service="retrieval")
    server.add_service(retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
                       RetrievalServicer(store, catalog, embedder, maintenance, settings),
                       "meshllm.retrieval.v1.RetrievalService")
    return server, maintenance


async def main(settings: RetrievalSettings) -> None:
    store, embedder = await asyncio.gather(asyncio.to_thread(open_store, settings),
                                           asyncio.to_thread(load_embedder, settings))
    server, maintenance = retrieval_server(settings, store, embedder)
    port = await server.start()
    registration = await register_server(server, settings.replica_id)
    print(f"READY port={port}", flush=True)
    await server.wait_for_shutdown_signal()
    if registration is not None:
        await registration.stop()
    await server.drain()
    maintenance.stop()
    embedder.close()
    await asyncio.to_thread(store.close)


if __name__ == "__main__":
    settings = RetrievalSettings()
    configure_observability("retrieval", settings)
    asyncio.run(main(settings))
