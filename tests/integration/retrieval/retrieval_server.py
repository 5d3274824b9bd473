"""A retrieval replica in the test's own process, wired as services/retrieval/__main__.py wires
one (not registered with a control plane), on a store in a directory the test owns. Calls
carry the tenant headers Envoy's ext_authz would have set.

    async with running_retrieval("lance", tmp_path, encoder) as retrieval:
        await retrieval.as_tenant("a").CreateCollection(...)

Starting it again on the same path is a restart: the store is opened anew."""
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.retrieval.v1 import retrieval_pb2_grpc
from meshllm.sentence_embeddings import SentenceEncoder
from services.retrieval.__main__ import open_store, retrieval_server
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedding_worker import EmbeddingWorker
from tests.tenant_headers import AsTenant

ALL_COLLECTIONS = auth_pb2.Policy(allowed_collections=["*"])


@dataclass
class RetrievalReplica:
    port: int
    channel: grpc.aio.Channel
    stub: retrieval_pb2_grpc.RetrievalServiceStub
    settings: RetrievalSettings

    def as_tenant(self, tenant: str, policy: auth_pb2.Policy = ALL_COLLECTIONS) -> AsTenant:
        return AsTenant(self.stub, tenant, policy)


def settings_for(store: str, path: Path, **overrides) -> RetrievalSettings:
    return RetrievalSettings(store=store, lance_directory=str(path / "lance"),
                             milvus_uri=str(path / "milvus.db"), controlplane_address="",
                             metrics_port=-1, drain_grace_seconds=1, **overrides)


@asynccontextmanager
async def running_retrieval(store_kind: str, path: Path, encoder: SentenceEncoder,
                            **overrides) -> AsyncIterator[RetrievalReplica]:
    settings = settings_for(store_kind, path, **overrides)
    store = open_store(settings)
    embedder = EmbeddingWorker(encoder)
    server, maintenance = retrieval_server(settings, store, embedder)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RetrievalReplica(port, channel, retrieval_pb2_grpc.RetrievalServiceStub(channel),
                               settings)
    finally:
        await channel.close()
        await server.drain(grace_seconds=1)
        maintenance.stop()
        embedder.close()
        store.close()
