"""Each store's dense index against exact search: 100k synthetic chunks (clustered unit
vectors, bench/synthetic_corpus.py), indexed as the service indexes them (`optimize`), and
recall@10 over 50 queries at least 0.95. `python -m bench.retrieval` prints the figure."""
import time
import uuid

import pytest

from bench.synthetic_corpus import DIMENSION, SyntheticCorpus, dense_recall, load_directly
from services.retrieval.__main__ import open_store
from services.retrieval.store import CollectionSpec
from tests.integration.retrieval.retrieval_server import settings_for

CHUNKS = 100_000


@pytest.mark.parametrize("store_kind", ["lance", "milvus"])
def test_the_dense_index_finds_at_least_95_percent_of_the_exact_top_10(store_kind, tmp_path):
    store = open_store(settings_for(store_kind, tmp_path))
    try:
        spec = CollectionSpec(tenant="acme", name="corpus", uid=uuid.uuid4().hex,
                              dimension=DIMENSION, embedding_model="synthetic", max_tokens=128,
                              overlap_tokens=16, create_time=time.time())
        store.create_collection(spec)
        corpus = SyntheticCorpus(seed=0)
        _, ids, vectors = load_directly(store, spec, corpus, CHUNKS)
        store.optimize(spec)
        assert dense_recall(store, spec, ids, vectors, corpus.vectors(50)) >= 0.95
    finally:
        store.close()
