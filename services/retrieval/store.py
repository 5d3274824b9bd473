"""What the retrieval service asks of a vector store, and the plain records it passes.

Two stores implement it (services/retrieval/stores/): LanceDB, embedded on local disk, and
Milvus, a server (or Milvus Lite in-process). The contract suite (tests/integration/
retrieval/test_store_contract.py and test_store_isolation.py) holds both to the same
behaviour.

The service has already resolved the tenant (from Envoy's headers) and checked the input
when it calls a store; a store never sees a collection name without its tenant, and keeps
every tenant's chunks where no query of another tenant can reach them.

The methods are synchronous and may block (disk, network): the service calls them in worker
threads. A store must allow concurrent calls from several threads. A call on a collection
deleted meanwhile raises CollectionMissing or finds nothing, never another collection's
rows."""
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np


class CollectionExists(Exception):
    """The tenant already has a collection of that name."""


class CollectionMissing(Exception):
    """The collection was deleted while the call used it."""


@dataclass(frozen=True)
class CollectionSpec:
    """A collection as created: who owns it and how it chunks and embeds."""

    tenant: str
    name: str
    uid: str
    """Made by the service at creation (32 hex digits), never shown to clients: stores name
    tables, partitions and rows by it, so that a collection created again under an old name
    shares nothing with the one deleted."""
    dimension: int
    embedding_model: str
    max_tokens: int
    overlap_tokens: int
    description: str = ""
    create_time: float = 0.0
    """Seconds since the epoch; the service sets it, stores keep it as given."""


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document, as stored."""

    chunk_id: str
    document_id: str
    chunk_index: int
    text: str
    start_offset: int
    end_offset: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentVersion:
    """A document's chunks as one write: the document's previous chunks, if any, are
    replaced by these, all at once."""

    document_id: str
    content_hash: str
    """Digest of the text, metadata and chunking; equal hashes mean nothing changed."""
    chunks: list[Chunk]
    embeddings: np.ndarray
    """float32, one unit-length row per chunk, in order."""


@dataclass(frozen=True)
class Filters:
    """Every condition must hold: the document is one of `document_ids` (when given), and
    for each (key, values) its metadata value for key is one of values."""

    document_ids: tuple[str, ...] = ()
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()


class SearchMode(Enum):
    HYBRID = "hybrid"
    DENSE = "dense"
    KEYWORD = "keyword"


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    """Higher is better: for hybrid the sum over both rankings of 1 / (60 + rank), ranks
    from 1; cosine similarity for dense; BM25 for keyword."""


@dataclass(frozen=True)
class CollectionCounts:
    documents: int
    chunks: int


class VectorStore(Protocol):
    def create_collection(self, spec: CollectionSpec) -> None:
        """Raises CollectionExists if (spec.tenant, spec.name) is taken."""

    def get_collection(self, tenant: str, name: str) -> CollectionSpec | None: ...

    def list_collections(self, tenant: str) -> list[CollectionSpec]:
        """The tenant's collections, by name."""

    def delete_collection(self, spec: CollectionSpec) -> None:
        """Deletes the collection and its chunks; a collection already gone is no error."""

    def counts(self, spec: CollectionSpec) -> CollectionCounts:
        """After a crash mid-write Milvus may count rows of a version no read returns, until
        that document is written or deleted again."""

    def content_hashes(self, spec: CollectionSpec, document_ids: list[str]) -> dict[str, str]:
        """The stored content hash of each of these documents the collection holds."""

    def write_documents(self, spec: CollectionSpec, documents: list[DocumentVersion]) -> None:
        """Writes the documents (distinct ids). When it returns, they are durable and
        searchable. If it raises or the process dies, each document is either wholly its new
        version or wholly what it was before; never a mix, never partly missing."""

    def delete_documents(self, spec: CollectionSpec, document_ids: list[str]) -> int:
        """Deletes these documents' chunks; returns how many of the documents existed."""

    def search(self, spec: CollectionSpec, query: str, embedding: np.ndarray | None,
               mode: SearchMode, top_k: int, filters: Filters) -> list[Hit]:
        """The best `top_k` chunks, best first. `embedding` (unit length) is given unless
        mode is KEYWORD; `query` may be empty only when mode is DENSE."""

    def optimize(self, spec: CollectionSpec) -> None:
        """Brings the collection's indexes up to date with every write so far (the service
        calls it in the background after writes; searches are correct without it, only
        slower). Returns when done; may take long on a large collection."""

    def close(self) -> None: ...
