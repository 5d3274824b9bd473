"""Collections and chunks in Milvus: a cluster in production, Milvus Lite (a `.db` path) in
tests, the same code for both.

The chunks of every tenant share one Milvus collection per embedding dimension, partitioned
by the collection's uid as the partition key: Milvus's way to hold many small tenants, one
schema and one set of indexes however many collections they make. A second Milvus
collection is the catalog of specs. Every expression the store sends names both the tenant
and the uid.

Expressions carry no user string, only hex digests the store made: rows hold the tenant,
document id and metadata pairs hashed, beside what searches return, and filters compare
hashes. Milvus's filter templating would keep user strings out of expressions too, but Milvus
Lite 3.2.2 does not implement it (its parser stops at the `{`); digests are safe on both
without relying on either parser's escaping.

Milvus has no multi-row transaction, so a document's new version is written in two steps.
The rows past chunk 0, keyed by the content hash, go first; then chunk 0, keyed by the
document alone, replaces the old version's chunk 0 in a one-row upsert: that is the commit.
Reads trust only rows whose content hash is their document's chunk 0's, so a write cut short
leaves each document wholly old or wholly new; the rows it left behind are deleted by the
next write or delete of that document, and until then only `counts().chunks` sees them.

In Milvus Lite writes end with a flush: it makes them durable, and its searches over
unflushed rows are about forty times slower. A Milvus server has them durable in its log once
acknowledged, seals segments itself, and rate-limits flushes (a flush per write would
throttle a bulk load), so there the store leaves flushing to it. A collection that a new
client finds is released, so the store loads them all on open. Collections are
Strong-consistent: a write a call acknowledged is seen by every replica's next search."""
import json
import re
import threading
import time
from collections.abc import Iterator

import numpy as np
from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker

from services.retrieval.store import (Chunk, CollectionCounts, CollectionExists,
                                      CollectionMissing, CollectionSpec, DocumentVersion,
                                      Filters, Hit, SearchMode)
from services.retrieval.stores.milvus_rows import (
    catalog_schema, check_uid, chunk_schema, commit_key, digest, document_rows, literal, literals,
    tag, version_key)

# HNSW: recall@10 against exact search 0.98-0.99 at 100k clustered chunks over 10 uids (ef
# 128), at half FLAT's latency in Milvus Lite. Search ef never falls below the hits fetched,
# as Milvus requires.
_HNSW_BUILD = {"M": 16, "efConstruction": 200}
_HNSW_EF = 128
_RRF_K = 60
# Hits fetched per hit returned: room for rows of versions a crash left behind, which the
# chunk 0 check drops.
_FETCH_FACTOR = 2
_MAX_FETCH = 16384  # Milvus's largest topk
# Upsert requests stay well under Milvus's 64 MiB message limit.
_BATCH_BYTES = 16 << 20
# Expressions name at most this many keys (the service sends up to 1000 ids per call).
_KEYS_PER_EXPRESSION = 1000
_INDEX_POLL_SECONDS = 1.0
_CHUNK_FIELDS = ["chunk_id", "document_id", "chunk_index", "text", "start_offset",
                 "end_offset", "metadata", "content_hash"]
_SPEC_FIELDS = ["tenant", "name", "uid", "dimension", "embedding_model", "max_tokens",
                "overlap_tokens", "description", "create_time"]


class MilvusStore:
    def __init__(self, uri: str, token: str = "", prefix: str = "meshllm"):
        self._client = MilvusClient(uri=uri, token=token)
        self._flushes = uri.endswith(".db")  # Milvus Lite: see the module's docstring
        self._prefix = prefix
        self._catalog = f"{prefix}_collections"
        self._ready_lock = threading.Lock()
        # One write at a time: Milvus Lite 3.2.2 corrupts its state when two flushes of a
        # collection overlap ("current_seq is monotonic"). A write call is many rows in a few
        # requests, so on a cluster this costs little; it also keeps two of this process's
        # threads from creating one name twice, as Milvus has no unique constraint.
        self._write_lock = threading.Lock()
        if not self._client.has_collection(self._catalog):
            self._client.create_collection(self._catalog, schema=catalog_schema(),
                                           index_params=self._catalog_index(),
                                           consistency_level="Strong")
        self._client.load_collection(self._catalog)
        self._ready = {name for name in self._client.list_collections()
                       if re.fullmatch(re.escape(prefix) + r"_chunks_\d+", name)}
        for name in self._ready:
            self._client.load_collection(name)

    def create_collection(self, spec: CollectionSpec) -> None:
        check_uid(spec.uid)
        self._chunks(spec)
        with self._write_lock:
            if self.get_collection(spec.tenant, spec.name) is not None:
                raise CollectionExists(f"collection {spec.name!r} already exists")
            row = {field: getattr(spec, field) for field in _SPEC_FIELDS}
            self._client.insert(self._catalog, [{
                **row, "key": digest(spec.tenant, spec.name),
                "tenant_key": digest(spec.tenant), "unused": [0.0, 0.0]}])
            self._flush(self._catalog)

    def get_collection(self, tenant: str, name: str) -> CollectionSpec | None:
        rows = self._client.query(
            self._catalog, output_fields=_SPEC_FIELDS,
            filter=f"tenant_key == {literal(digest(tenant))} "
                   f"and key == {literal(digest(tenant, name))}")
        return _spec(rows[0]) if rows else None

    def list_collections(self, tenant: str) -> list[CollectionSpec]:
        rows = self._client.query(self._catalog, output_fields=_SPEC_FIELDS,
                                  filter=f"tenant_key == {literal(digest(tenant))}")
        return sorted((_spec(row) for row in rows), key=lambda spec: spec.name)

    def delete_collection(self, spec: CollectionSpec) -> None:
        chunks = self._chunks(spec)
        with self._write_lock:
            # The catalog row goes first: a write on another replica that ends after it finds
            # its collection gone and removes what it wrote (see write_documents).
            self._client.delete(self._catalog, filter=(
                f"{self._owned(spec)} and key == {literal(digest(spec.tenant, spec.name))}"))
            self._flush(self._catalog)
            self._client.delete(chunks, filter=self._owned(spec))
            self._flush(chunks)

    def counts(self, spec: CollectionSpec) -> CollectionCounts:
        chunks = self._count(spec, "")
        if not chunks:
            self._require(spec)
        return CollectionCounts(documents=self._count(spec, " and chunk_index == 0"),
                                chunks=chunks)

    def content_hashes(self, spec: CollectionSpec, document_ids: list[str]) -> dict[str, str]:
        hashes = self._committed(spec, document_ids)
        if not hashes:
            self._require(spec)
        return hashes

    def write_documents(self, spec: CollectionSpec, documents: list[DocumentVersion]) -> None:
        chunks = self._chunks(spec)
        rows = [row for document in documents for row in document_rows(spec, document)]
        with self._write_lock:
            # Every document's other chunks are acknowledged before any chunk 0, the commit.
            for batch in _batches([row for row in rows if row["chunk_index"] != 0]):
                self._client.upsert(chunks, batch)
            for batch in _batches([row for row in rows if row["chunk_index"] == 0]):
                self._client.upsert(chunks, batch)
            # A document written with no chunks is deleted, its old chunk 0 before the rest.
            self._delete_rows(spec, "key", [commit_key(spec, document.document_id)
                                            for document in documents if not document.chunks])
            for part in _slices(documents, _KEYS_PER_EXPRESSION):
                self._client.delete(chunks, filter=(
                    f"{self._owned(spec)} and document_key in "
                    f"{literals(digest(document.document_id) for document in part)} and "
                    f"version_key not in {literals(version_key(document) for document in part)}"))
            self._flush(chunks)
            if not self._exists(spec):
                self._client.delete(chunks, filter=self._owned(spec))
                self._flush(chunks)
                raise CollectionMissing(f"collection {spec.name!r} was deleted")

    def delete_documents(self, spec: CollectionSpec, document_ids: list[str]) -> int:
        with self._write_lock:
            existing = self.content_hashes(spec, document_ids)
            # Chunk 0 first: a delete cut short leaves the document whole or gone.
            self._delete_rows(spec, "key", [commit_key(spec, document_id)
                                            for document_id in document_ids])
            self._delete_rows(spec, "document_key", [digest(document_id)
                                                     for document_id in document_ids])
            self._flush(self._chunks(spec))
        return len(existing)

    def search(self, spec: CollectionSpec, query: str, embedding: np.ndarray | None,
               mode: SearchMode, top_k: int, filters: Filters) -> list[Hit]:
        chunks = self._chunks(spec)
        expression = self._owned(spec)
        if filters.document_ids:
            keys = [digest(document_id) for document_id in filters.document_ids]
            expression += f" and document_key in {literals(keys)}"
        for key, values in filters.metadata:
            tags = [tag(key, value) for value in values]
            expression += f" and ARRAY_CONTAINS_ANY(tags, {literals(tags)})"
        fetch = min(top_k * _FETCH_FACTOR, _MAX_FETCH)
        searches = []  # (field, data, param)
        if mode is not SearchMode.KEYWORD:
            searches.append(("dense", [np.asarray(embedding, dtype=np.float32)],
                             {"metric_type": "COSINE", "params": {"ef": max(_HNSW_EF, fetch)}}))
        if mode is not SearchMode.DENSE:
            searches.append(("sparse", [query], {"metric_type": "BM25"}))
        if len(searches) == 2:
            found = self._client.hybrid_search(
                chunks, [AnnSearchRequest(data, field, param, fetch, expr=expression)
                         for field, data, param in searches],
                RRFRanker(_RRF_K), limit=fetch, output_fields=_CHUNK_FIELDS)[0]
        else:
            [(field, data, param)] = searches
            found = self._client.search(chunks, data=data, anns_field=field,
                                        search_params=param, limit=fetch, filter=expression,
                                        output_fields=_CHUNK_FIELDS)[0]
        committed = self._committed(spec, list({hit["entity"]["document_id"] for hit in found}))
        hits = [_hit(hit["entity"], _score(mode, hit["distance"])) for hit in found
                if committed.get(hit["entity"]["document_id"]) == hit["entity"]["content_hash"]]
        if not hits:
            self._require(spec)
        return hits[:top_k]

    def optimize(self, spec: CollectionSpec) -> None:
        """Milvus indexes sealed segments and compacts them on its own; every write has
        flushed (sealed) its rows already, so what is left is to wait for the builds. The
        Milvus collection is shared, so a manual compaction would rewrite every tenant's
        segments for one collection's sake: Milvus's own compaction is left to do it."""
        self._require(spec)
        chunks = self._chunks(spec)
        for field in ("dense", "sparse"):
            while self._client.describe_index(chunks, field)["pending_index_rows"]:
                time.sleep(_INDEX_POLL_SECONDS)

    def close(self) -> None:
        # A write still running (its caller gone: a client that went away leaves its thread
        # to finish) ends first; cut off, it would leave rows only counts() sees.
        with self._write_lock:
            self._client.close()

    def _chunks(self, spec: CollectionSpec) -> str:
        """The Milvus collection holding chunks of the spec's dimension, made on first use."""
        name = f"{self._prefix}_chunks_{spec.dimension}"
        with self._ready_lock:
            if name not in self._ready:
                if not self._client.has_collection(name):
                    self._client.create_collection(
                        name, schema=chunk_schema(spec.dimension),
                        index_params=self._chunk_index(), consistency_level="Strong")
                self._client.load_collection(name)
                self._ready.add(name)
        return name

    def _flush(self, name: str) -> None:
        if self._flushes:
            self._client.flush(name)

    def _owned(self, spec: CollectionSpec) -> str:
        """The expression every query of the spec's rows starts with: its tenant and uid."""
        return f"tenant_key == {literal(digest(spec.tenant))} and uid == {literal(spec.uid)}"

    def _count(self, spec: CollectionSpec, condition: str) -> int:
        rows = self._client.query(self._chunks(spec), filter=self._owned(spec) + condition,
                                  output_fields=["count(*)"])
        return rows[0]["count(*)"]

    def _committed(self, spec: CollectionSpec, document_ids: list[str]) -> dict[str, str]:
        """The content hash of each document's chunk 0: its committed version."""
        tenant_key = digest(spec.tenant)
        hashes = {}
        for part in _slices(document_ids, _KEYS_PER_EXPRESSION):
            keys = [commit_key(spec, document_id) for document_id in part]
            # By primary key alone, which names tenant and uid already: Milvus Lite finds
            # keys in milliseconds but scans every row for any other condition (a quarter of
            # a second at 100k rows). The tenant and uid are checked here instead.
            for row in self._client.query(
                    self._chunks(spec), filter=f"key in {literals(keys)}",
                    output_fields=["tenant_key", "uid", "document_id", "content_hash"]):
                if row["tenant_key"] == tenant_key and row["uid"] == spec.uid:
                    hashes[row["document_id"]] = row["content_hash"]
        return hashes

    def _delete_rows(self, spec: CollectionSpec, field: str, keys: list[str]) -> None:
        for part in _slices(keys, _KEYS_PER_EXPRESSION):
            self._client.delete(self._chunks(spec),
                                filter=f"{self._owned(spec)} and {field} in {literals(part)}")

    def _exists(self, spec: CollectionSpec) -> bool:
        return bool(self._client.query(
            self._catalog, output_fields=["uid"],
            filter=f"{self._owned(spec)} and key == {literal(digest(spec.tenant, spec.name))}"))

    def _require(self, spec: CollectionSpec) -> None:
        """Raises CollectionMissing if the spec's collection is gone: asked only when a call
        found nothing, since a deleted collection has no rows left."""
        if not self._exists(spec):
            raise CollectionMissing(f"collection {spec.name!r} was deleted")

    def _catalog_index(self):
        index = self._client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        index.add_index("tenant_key", index_type="INVERTED")
        return index

    def _chunk_index(self):
        index = self._client.prepare_index_params()
        index.add_index("dense", index_type="HNSW", metric_type="COSINE", params=_HNSW_BUILD)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        for field in ("tenant_key", "document_key", "chunk_index"):
            index.add_index(field, index_type="INVERTED")
        return index

def _batches(rows: list[dict]) -> Iterator[list[dict]]:
    batch, size = [], 0
    for row in rows:
        row_size = (len(row["text"].encode()) + row["dense"].nbytes
                    + len(json.dumps(row["metadata"])) + 4 * len(row["chunk_id"]) + 512)
        if batch and size + row_size > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


def _slices(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _score(mode: SearchMode, distance: float) -> float:
    # Milvus reports cosine similarity for COSINE and the fused score for RRF, and BM25 as a
    # positive score, except Milvus Lite 3.2.2, which negates it.
    return abs(distance) if mode is SearchMode.KEYWORD else distance


def _hit(entity: dict, score: float) -> Hit:
    return Hit(chunk=Chunk(chunk_id=entity["chunk_id"], document_id=entity["document_id"],
                           chunk_index=entity["chunk_index"], text=entity["text"],
                           start_offset=entity["start_offset"], end_offset=entity["end_offset"],
                           metadata=dict(entity["metadata"])),
               score=float(score))


def _spec(row: dict) -> CollectionSpec:
    return CollectionSpec(**{field: row[field] for field in _SPEC_FIELDS})
