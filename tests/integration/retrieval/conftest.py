import pytest

from services.retrieval.store import VectorStore

from meshllm.sentence_embeddings import SentenceEncoder, default_model_path
from services.retrieval.validation import MAX_CHUNK_TOKENS


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    """The real all-MiniLM-L6-v2, loaded once: every replica the tests start shares it (one
    replica at a time uses it)."""
    return SentenceEncoder(default_model_path(), MAX_CHUNK_TOKENS)


class StoreFactory:
    """Opens the store under test on this test's directory, again after a restart."""

    def __init__(self, kind: str, directory):
        self.kind, self.directory, self.open_stores = kind, directory, []

    def __call__(self) -> VectorStore:
        if self.kind == "lance":
            from services.retrieval.stores.lance_store import LanceStore
            store = LanceStore(self.directory / "lance")
        else:
            from services.retrieval.stores.milvus_store import MilvusStore
            store = MilvusStore(str(self.directory / "milvus.db"))
        self.open_stores.append(store)
        return store

    def restart(self, store: VectorStore) -> VectorStore:
        self.open_stores.remove(store)
        store.close()
        return self()


@pytest.fixture(params=["lance", "milvus"])
def store_factory(request, tmp_path):
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    for store in factory.open_stores:
        store.close()


@pytest.fixture
def store(store_factory) -> VectorStore:
    return store_factory()
