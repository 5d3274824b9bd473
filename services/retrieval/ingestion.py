"""Documents into a collection: chunked, checked against what is stored (unchanged documents
are neither embedded nor written), embedded, and written in batches.

A bulk load commits a batch once it holds `batch_chunks` chunks: what was committed stays if
the load is cut off later, and each document is committed whole (VectorStore.write_documents)."""
import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from services.retrieval.chunking import chunk_spans
from services.retrieval.embedding_worker import EmbeddingWorker
from services.retrieval.validation import invalid
from services.retrieval.store import Chunk, CollectionSpec, DocumentVersion, VectorStore

DOCUMENTS = Counter("meshllm_retrieval_documents", "Documents upserted, by outcome", ["outcome"])
CHUNKS_WRITTEN = Counter("meshllm_retrieval_chunks_written", "Chunks embedded and written")
_OUTCOME_WORDS = {r.DOCUMENT_OUTCOME_CREATED: "created", r.DOCUMENT_OUTCOME_UPDATED: "updated",
                  r.DOCUMENT_OUTCOME_UNCHANGED: "unchanged"}


@dataclass(frozen=True)
class PreparedDocument:
    document_id: str
    content_hash: str
    chunks: list[Chunk]


def content_hash(spec: CollectionSpec, document: r.Document) -> str:
    """Changes when anything that makes the document's chunks changes."""
    content = json.dumps([document.text, sorted(document.metadata.items()), spec.max_tokens,
                          spec.overlap_tokens, spec.embedding_model], ensure_ascii=False)
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def chunk_id(spec: CollectionSpec, document_id: str, version: str, index: int) -> str:
    """Unique across collections and versions: a new version never overwrites rows of the old
    one in place, and stores that keep every tenant in one table need no other key."""
    key = "\x1f".join((spec.uid, document_id, version, str(index)))
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def prepare(spec: CollectionSpec, tokenizer, document: r.Document) -> PreparedDocument:
    version = content_hash(spec, document)
    metadata = dict(document.metadata)
    spans = chunk_spans(tokenizer, document.text, spec.max_tokens, spec.overlap_tokens)
    chunks = [Chunk(chunk_id=chunk_id(spec, document.id, version, index),
                    document_id=document.id, chunk_index=index,
                    text=document.text[span.start:span.end], start_offset=span.start,
                    end_offset=span.end, metadata=metadata)
              for index, span in enumerate(spans)]
    return PreparedDocument(document.id, version, chunks)


class BulkUpsert:
    """One UpsertDocuments call: `add` each document as it arrives, `commit` at the end."""

    def __init__(self, spec: CollectionSpec, store: VectorStore, embedder: EmbeddingWorker,
                 batch_chunks: int, on_written: Callable[[CollectionSpec], None]):
        self._spec = spec
        self._store = store
        self._embedder = embedder
        self._batch_chunks = batch_chunks
        self._on_written = on_written
        self._pending: list[PreparedDocument] = []
        self._pending_chunks = 0
        self.results: list[r.DocumentResult] = []
        self.committed_documents = 0
        self.chunks_written = 0

    async def add(self, document: r.Document) -> None:
        if any(pending.document_id == document.id for pending in self._pending):
            await self.commit()  # a batch writes distinct ids; the later version wins
        prepared = await asyncio.to_thread(prepare, self._spec, self._embedder.tokenizer,
                                           document)
        if not prepared.chunks:
            raise invalid("documents.text", f"document {document.id[:80]!r}: the text has no "
                                            "word to index", "INVALID_DOCUMENT")
        self._pending.append(prepared)
        self._pending_chunks += len(prepared.chunks)
        if self._pending_chunks >= self._batch_chunks:
            await self.commit()

    async def commit(self) -> None:
        """Writes what was added since the last commit."""
        if not self._pending:
            return
        batch, self._pending, self._pending_chunks = self._pending, [], 0
        stored = await asyncio.to_thread(self._store.content_hashes, self._spec,
                                         [document.document_id for document in batch])
        changed = [document for document in batch
                   if stored.get(document.document_id) != document.content_hash]
        if changed:
            texts = [chunk.text for document in changed for chunk in document.chunks]
            embeddings = await self._embedder.embed_documents(texts)
            versions, first = [], 0
            for document in changed:
                rows = embeddings[first:first + len(document.chunks)]
                first += len(document.chunks)
                versions.append(DocumentVersion(document.document_id, document.content_hash,
                                                document.chunks, rows))
            await asyncio.to_thread(self._store.write_documents, self._spec, versions)
            self.chunks_written += len(texts)
            CHUNKS_WRITTEN.inc(len(texts))
            self._on_written(self._spec)
        for document in batch:
            previous = stored.get(document.document_id)
            outcome = (r.DOCUMENT_OUTCOME_CREATED if previous is None else
                       r.DOCUMENT_OUTCOME_UNCHANGED if previous == document.content_hash else
                       r.DOCUMENT_OUTCOME_UPDATED)
            DOCUMENTS.labels(_OUTCOME_WORDS[outcome]).inc()
            self.results.append(r.DocumentResult(document_id=document.document_id,
                                                 outcome=outcome,
                                                 chunk_count=len(document.chunks)))
        self.committed_documents += len(batch)
