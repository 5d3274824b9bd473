"""The RetrievalService: glue between the protos and the catalog, ingestion and the store.

The tenant comes from Envoy's headers and nothing else; every collection is looked up among
that tenant's own, so a name another tenant uses, or an id the caller forges, finds nothing
of anyone else's."""
import asyncio
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Histogram

from meshllm.api.retrieval.v1 import retrieval_pb2 as r, retrieval_pb2_grpc
from meshllm.collection_access import may_use_collection
from meshllm.errors import CallRefused
from meshllm.tenancy import Tenancy, required_tenancy
from services.retrieval import validation
from services.retrieval.catalog import CollectionCatalog
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedding_worker import EmbeddingWorker
from services.retrieval.index_maintenance import IndexMaintenance
from services.retrieval.ingestion import BulkUpsert
from services.retrieval.store import (CollectionExists, CollectionMissing, CollectionSpec,
                                      SearchMode, VectorStore)

SEARCH_SECONDS = Histogram(
    "meshllm_retrieval_search_seconds", "Search calls, from request to the last passage found "
    "(query embedding included), by mode", ["mode"],
    buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5))
QUERY_EMBEDDING_SECONDS = Histogram(
    "meshllm_retrieval_query_embedding_seconds", "Embedding a search query",
    buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1))


def tenancy_of(context: grpc.aio.ServicerContext) -> Tenancy:
    return required_tenancy(
        context.invocation_metadata(),
        "collections belong to tenants; call through Envoy's public listener with "
        "'authorization: Bearer <api key>'")


def not_found(name: str) -> CallRefused:
    return CallRefused(grpc.StatusCode.NOT_FOUND,
                       f"collection {name!r} does not exist (ListCollections lists yours)",
                       reason="COLLECTION_NOT_FOUND", field="collection")


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, store: VectorStore, catalog: CollectionCatalog,
                 embedder: EmbeddingWorker, maintenance: IndexMaintenance,
                 settings: RetrievalSettings):
        self._store = store
        self._catalog = catalog
        self._embedder = embedder
        self._maintenance = maintenance
        self._settings = settings

    async def CreateCollection(self, request: r.CreateCollectionRequest, context):
        tenancy = tenancy_of(context)
        validation.check_collection_name(request.name)
        validation.check_description(request.description)
        max_tokens, overlap = validation.chunking(request.chunking)
        self._check_allowed(tenancy, request.name, "name")
        try:
            spec = await self._catalog.create(tenancy.tenant, request.name, request.description,
                                              max_tokens, overlap)
        except CollectionExists:
            raise CallRefused(grpc.StatusCode.ALREADY_EXISTS,
                              f"collection {request.name!r} already exists; delete it first or "
                              "pick another name", reason="COLLECTION_EXISTS",
                              field="name") from None
        return r.CreateCollectionResponse(collection=await self._describe(spec))

    async def DescribeCollection(self, request: r.DescribeCollectionRequest, context):
        spec = await self._collection(tenancy_of(context), request.name, "name")
        return r.DescribeCollectionResponse(collection=await self._describe(spec))

    async def ListCollections(self, request: r.ListCollectionsRequest, context):
        specs = await self._catalog.list(tenancy_of(context).tenant)
        collections = await asyncio.gather(*(self._describe(spec) for spec in specs))
        return r.ListCollectionsResponse(collections=collections)

    async def DeleteCollection(self, request: r.DeleteCollectionRequest, context):
        spec = await self._collection(tenancy_of(context), request.name, "name")
        await self._catalog.delete(spec)
        return r.DeleteCollectionResponse()

    async def UpsertDocuments(self, requests, context):
        tenancy = tenancy_of(context)
        try:
            return await self._upsert(tenancy, requests)
        except CollectionMissing:
            raise CallRefused(grpc.StatusCode.NOT_FOUND, "the collection was deleted while the "
                              "documents were loading", reason="COLLECTION_NOT_FOUND",
                              field="collection") from None

    async def _upsert(self, tenancy: Tenancy, requests) -> r.UpsertDocumentsResponse:
        upsert: BulkUpsert | None = None
        number = 0
        async for request in requests:
            if upsert is None:
                spec = await self._collection(tenancy, request.collection, "collection")
                upsert = BulkUpsert(spec, self._store, self._embedder,
                                    self._settings.write_batch_chunks, self._maintenance.written)
            elif request.collection not in ("", spec.name):
                await upsert.commit()
                raise self._refused_after(upsert, validation.invalid(
                    "collection", f"one call loads one collection: it began with "
                                  f"{spec.name!r}, then named {request.collection!r}"))
            for document in request.documents:
                number += 1
                try:
                    validation.check_document(document, number,
                                              self._settings.max_document_bytes)
                    await upsert.add(document)
                except CallRefused as refusal:
                    await upsert.commit()
                    raise self._refused_after(upsert, refusal) from None
        if upsert is None:
            raise validation.invalid("collection", "the call sent no request; the first names "
                                                   "the collection")
        await upsert.commit()
        return r.UpsertDocumentsResponse(results=upsert.results,
                                         chunks_written=upsert.chunks_written)

    async def DeleteDocuments(self, request: r.DeleteDocumentsRequest, context):
        spec = await self._collection(tenancy_of(context), request.collection, "collection")
        validation.check_document_ids(request.document_ids, required=True)
        deleted = await self._in_store(self._store.delete_documents, spec,
                                       list(dict.fromkeys(request.document_ids)))
        self._maintenance.written(spec)
        return r.DeleteDocumentsResponse(deleted_documents=deleted)

    async def Search(self, request: r.SearchRequest, context):
        started = time.perf_counter()
        spec = await self._collection(tenancy_of(context), request.collection, "collection")
        mode = validation.search_mode(request.mode)
        validation.check_query(request.query)
        top_k = validation.top_k(request.top_k)
        filters = validation.filters(request.filters, request.document_ids)
        embedding = validation.query_embedding(request.query_embedding, spec.dimension)
        if not request.query.strip():
            if mode is SearchMode.KEYWORD or embedding is None:
                raise validation.invalid("query", "query is empty; keyword search needs one, "
                                                  "and so does any search without a "
                                                  "query_embedding", "INVALID_QUERY")
            mode = SearchMode.DENSE
        if embedding is None and mode is not SearchMode.KEYWORD:
            embedded = time.perf_counter()
            embedding = await self._embedder.embed_query(request.query)
            QUERY_EMBEDDING_SECONDS.observe(time.perf_counter() - embedded)
        hits = await self._in_store(self._store.search, spec, request.query, embedding, mode,
                                    top_k, filters)
        SEARCH_SECONDS.labels(mode.value).observe(time.perf_counter() - started)
        yield r.SearchResponse(passages=[r.Passage(
            chunk_id=hit.chunk.chunk_id, document_id=hit.chunk.document_id,
            chunk_index=hit.chunk.chunk_index, text=hit.chunk.text, score=hit.score,
            metadata=hit.chunk.metadata, start_offset=hit.chunk.start_offset,
            end_offset=hit.chunk.end_offset) for hit in hits])

    async def _collection(self, tenancy: Tenancy, name: str, field: str) -> CollectionSpec:
        validation.check_collection_name(name, field)
        self._check_allowed(tenancy, name, field)
        spec = await self._catalog.get(tenancy.tenant, name)
        if spec is None:
            raise not_found(name)
        return spec

    @staticmethod
    def _check_allowed(tenancy: Tenancy, name: str, field: str) -> None:
        if not may_use_collection(tenancy.policy, name):
            raise CallRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"tenant {tenancy.tenant!r}'s policy does not allow collection {name!r} "
                "(policy.allowed_collections; '*' allows all)", reason="COLLECTION_NOT_ALLOWED",
                field=field)

    async def _describe(self, spec: CollectionSpec) -> r.Collection:
        counts = await self._in_store(self._store.counts, spec)
        created = Timestamp()
        created.FromNanoseconds(int(spec.create_time * 1e9))
        return r.Collection(
            name=spec.name, description=spec.description,
            chunking=r.ChunkingOptions(max_tokens=spec.max_tokens,
                                       overlap_tokens=spec.overlap_tokens),
            embedding_model=spec.embedding_model, dimension=spec.dimension,
            document_count=counts.documents, chunk_count=counts.chunks, create_time=created)

    @staticmethod
    async def _in_store(method, spec: CollectionSpec, *args):
        try:
            return await asyncio.to_thread(method, spec, *args)
        except CollectionMissing:
            raise not_found(spec.name) from None

    @staticmethod
    def _refused_after(upsert: BulkUpsert, refusal: CallRefused) -> CallRefused:
        """The refusal, saying what the call had committed before it."""
        refusal.message += (f" ({upsert.committed_documents} documents before it were "
                            "committed)")
        refusal.facts = {"committed_documents": str(upsert.committed_documents)}
        return refusal
