"""What the store contract tests write and read back: collection specs, documents whose
embeddings are known directions (so the dense order is known before searching), and strings
that break naively quoted filter expressions."""
import hashlib
import time
import uuid

import numpy as np

from services.retrieval.store import (
    Chunk, CollectionSpec, DocumentVersion, Filters, Hit, SearchMode, VectorStore)

DIMENSION = 384
EVERY_MODE = (SearchMode.DENSE, SearchMode.KEYWORD, SearchMode.HYBRID)
ENOUGH = 100
"""A top_k above any collection's chunk count in these tests."""

HOSTILE = (
    "it's", 'say "hi"', "back\\slash", "ends with \\", "' OR 1=1 --", '" or tenant != "',
    "(a) || (b)", "50%_off", "naïve 東京 🚀", "x'); DROP TABLE chunks; --", "`tick` ${x}",
    "line\nbreak", "*",
)


def new_spec(tenant: str = "acme", name: str = "docs", **fields) -> CollectionSpec:
    """A spec as the service's catalog makes one: a fresh uid, the time of creation."""
    fields = {"create_time": time.time(), **fields}
    return CollectionSpec(tenant=tenant, name=name, uid=uuid.uuid4().hex, dimension=DIMENSION,
                          embedding_model="all-MiniLM-L6-v2", max_tokens=128, overlap_tokens=16,
                          **fields)


def direction(seed: str) -> np.ndarray:
    """A unit vector of its own for each seed: two random directions in 384 dimensions are
    nearly orthogonal (|cosine| well under 0.3)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8]))
    vector = rng.standard_normal(DIMENSION)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def near(*weighted: tuple[str, float]) -> np.ndarray:
    """A unit query vector whose cosine with direction(seed) is about the seed's weight."""
    vector = sum(weight * direction(seed).astype(np.float64) for seed, weight in weighted)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def version(document_id: str, texts: list[str], metadata: dict[str, str] | None = None,
            embeddings: np.ndarray | None = None) -> DocumentVersion:
    """One version of a document, a chunk per text; chunk i's embedding is direction(text)."""
    metadata = metadata or {}
    digest = hashlib.sha256(repr((document_id, texts, sorted(metadata.items()))).encode())
    content_hash = digest.hexdigest()
    chunks, start = [], 0
    for index, text in enumerate(texts):
        chunks.append(Chunk(chunk_id=f"{document_id}:{content_hash[:8]}:{index}",
                            document_id=document_id, chunk_index=index, text=text,
                            start_offset=start, end_offset=start + len(text),
                            metadata=dict(metadata)))
        start += len(text) - 2
    if embeddings is None:
        embeddings = np.stack([direction(text) for text in texts])
    return DocumentVersion(document_id=document_id, content_hash=content_hash, chunks=chunks,
                           embeddings=embeddings)


def search(store: VectorStore, spec: CollectionSpec, mode: SearchMode, query: str = "",
           embedding: np.ndarray | None = None, top_k: int = ENOUGH,
           filters: Filters = Filters()) -> list[Hit]:
    if mode is not SearchMode.KEYWORD and embedding is None:
        embedding = direction(query or "any direction")
    if mode is SearchMode.KEYWORD:
        embedding = None
    hits = store.search(spec, query, embedding, mode, top_k, filters)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True), f"{mode}: hits not best first: {scores}"
    return hits


def chunk_ids(hits: list[Hit]) -> list[str]:
    return [hit.chunk.chunk_id for hit in hits]


def document_ids(hits: list[Hit]) -> set[str]:
    return {hit.chunk.document_id for hit in hits}


def stored_chunks(store: VectorStore, spec: CollectionSpec, document_id: str) -> list[Chunk]:
    """Every chunk the collection holds for the document, in chunk order."""
    hits = search(store, spec, SearchMode.DENSE, filters=Filters(document_ids=(document_id,)))
    return sorted((hit.chunk for hit in hits), key=lambda chunk: chunk.chunk_index)


def stored_texts(store: VectorStore, spec: CollectionSpec, document_id: str) -> list[str]:
    return [chunk.text for chunk in stored_chunks(store, spec, document_id)]


def created(store: VectorStore, *args, **fields):
    spec = new_spec(*args, **fields)
    store.create_collection(spec)
    return spec


HOSTILE_DOCUMENTS = [version(value, [f"marmalade hostile {index}"], {"tag": value})
                     for index, value in enumerate(HOSTILE)]
