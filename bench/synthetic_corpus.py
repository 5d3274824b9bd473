"""A synthetic corpus for retrieval at scale: clustered unit vectors (as embeddings of real
text cluster by topic) and texts of random words, written to a store directly (embedding 100k
chunks with the model would take over an hour on two cores, at ~20 chunks a second).
bench.retrieval measures with it, and tests/integration/retrieval/test_dense_recall.py holds
the dense index to its recall floor."""
import statistics
import time

import numpy as np

from services.retrieval.store import (Chunk, CollectionSpec, DocumentVersion, Filters,
                                      SearchMode, VectorStore)

DIMENSION = 384
WORDS = [f"w{i}" for i in range(5000)]
CHUNKS_PER_DOCUMENT = 5


class SyntheticCorpus:
    """Clustered unit vectors (as embeddings of real text cluster by topic) and texts of
    random words from a 5,000-word vocabulary."""

    def __init__(self, seed: int = 0, clusters: int = 2000):
        self._rng = np.random.default_rng(seed)
        self._centers = self._rng.standard_normal((clusters, DIMENSION)).astype(np.float32)

    def vectors(self, count: int) -> np.ndarray:
        picked = self._centers[self._rng.integers(0, len(self._centers), count)]
        vectors = picked + 0.6 * self._rng.standard_normal((count, DIMENSION)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def text(self, words: int = 30) -> str:
        return " ".join(self._rng.choice(WORDS, words))

    def documents(self, spec: CollectionSpec, count: int, first: int = 0):
        vectors = self.vectors(count * CHUNKS_PER_DOCUMENT)
        for number in range(first, first + count):
            document_id = f"doc-{number}"
            rows = vectors[(number - first) * CHUNKS_PER_DOCUMENT:
                           (number - first + 1) * CHUNKS_PER_DOCUMENT]
            chunks = [Chunk(f"{spec.uid[:8]}-{number}-{index}", document_id, index, self.text(),
                            0, 0, {"shard": str(number % 10)})
                      for index in range(CHUNKS_PER_DOCUMENT)]
            yield DocumentVersion(document_id, f"v{number}", chunks, rows)


def load_directly(store: VectorStore, spec: CollectionSpec, corpus: SyntheticCorpus,
                  chunks: int) -> tuple[float, list[str], np.ndarray]:
    """Writes `chunks` synthetic chunks: (seconds, their ids, their vectors)."""
    ids, vectors, seconds = [], [], 0.0
    documents = chunks // CHUNKS_PER_DOCUMENT
    for first in range(0, documents, 1000):
        batch = list(corpus.documents(spec, min(1000, documents - first), first))
        started = time.perf_counter()
        store.write_documents(spec, batch)
        seconds += time.perf_counter() - started
        ids.extend(chunk.chunk_id for document in batch for chunk in document.chunks)
        vectors.extend(document.embeddings for document in batch)
    return seconds, ids, np.concatenate(vectors)


def dense_recall(store: VectorStore, spec: CollectionSpec, ids: list[str], vectors: np.ndarray,
                 queries: np.ndarray) -> float:
    """Mean recall@10 of the store's dense search against exact search over every vector."""
    recalls = []
    for query in queries:
        exact = {ids[i] for i in np.argsort(-(vectors @ query))[:10]}
        found = store.search(spec, "", query, SearchMode.DENSE, 10, Filters())
        recalls.append(len(exact & {hit.chunk.chunk_id for hit in found}) / 10)
    return statistics.fmean(recalls)


