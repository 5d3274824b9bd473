import pytest

from meshllm.sentence_embeddings import SentenceEncoder, default_model_path
from services.retrieval.validation import MAX_CHUNK_TOKENS


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    """The real all-MiniLM-L6-v2, loaded once: every replica the tests start shares it (one
    replica at a time uses it)."""
    return SentenceEncoder(default_model_path(), MAX_CHUNK_TOKENS)
