"""What the Milvus store writes and how it names things: the two collections' schemas, a
document version's rows, and the hex digests that stand for user strings in keys and
expressions (no user string ever reaches a Milvus expression: milvus_store.py says why)."""
import hashlib
import json
import re
from collections.abc import Iterator

import numpy as np
from pymilvus import CollectionSchema, DataType, Function, FunctionType, MilvusClient

from services.retrieval.store import CollectionSpec, DocumentVersion

MAX_TAGS = 64  # the service allows 32 metadata pairs
HEX_KEY = re.compile(r"[0-9a-f]{32}")


def catalog_schema() -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=32)
    schema.add_field("tenant_key", DataType.VARCHAR, max_length=32)
    schema.add_field("tenant", DataType.VARCHAR, max_length=1024)
    schema.add_field("name", DataType.VARCHAR, max_length=256)
    schema.add_field("uid", DataType.VARCHAR, max_length=32)
    schema.add_field("dimension", DataType.INT64)
    schema.add_field("embedding_model", DataType.VARCHAR, max_length=1024)
    schema.add_field("max_tokens", DataType.INT64)
    schema.add_field("overlap_tokens", DataType.INT64)
    schema.add_field("description", DataType.VARCHAR, max_length=65535)
    schema.add_field("create_time", DataType.DOUBLE)
    # Milvus wants a vector field in every collection; the catalog never searches it.
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
    return schema


def chunk_schema(dimension: int) -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=32)
    schema.add_field("tenant_key", DataType.VARCHAR, max_length=32)
    schema.add_field("uid", DataType.VARCHAR, max_length=32, is_partition_key=True)
    schema.add_field("document_id", DataType.VARCHAR, max_length=1024)
    schema.add_field("document_key", DataType.VARCHAR, max_length=32)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=256)
    schema.add_field("version_key", DataType.VARCHAR, max_length=32)
    schema.add_field("chunk_id", DataType.VARCHAR, max_length=2048)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("start_offset", DataType.INT64)
    schema.add_field("end_offset", DataType.INT64)
    schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR,
                     max_capacity=MAX_TAGS, max_length=32)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                 input_field_names=["text"], output_field_names=["sparse"]))
    return schema


def document_rows(spec: CollectionSpec, document: DocumentVersion) -> Iterator[dict]:
    tenant_key = digest(spec.tenant)
    document_key = digest(document.document_id)
    version = version_key(document)
    for chunk, embedding in zip(document.chunks, document.embeddings, strict=True):
        yield {
            "key": (commit_key(spec, document.document_id) if chunk.chunk_index == 0 else
                    digest(spec.tenant, spec.uid, document.document_id,
                           document.content_hash, chunk.chunk_index)),
            "tenant_key": tenant_key, "uid": spec.uid,
            "document_id": document.document_id, "document_key": document_key,
            "content_hash": document.content_hash, "version_key": version,
            "chunk_id": chunk.chunk_id, "chunk_index": chunk.chunk_index,
            "start_offset": chunk.start_offset, "end_offset": chunk.end_offset,
            "text": chunk.text, "metadata": chunk.metadata,
            "tags": [tag(key, value) for key, value in chunk.metadata.items()],
            "dense": np.asarray(embedding, dtype=np.float32),
        }




def digest(*parts: object) -> str:
    """32 hex digits standing for `parts` in keys and expressions."""
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def commit_key(spec: CollectionSpec, document_id: str) -> str:
    """Chunk 0's primary key, the same for every version of the document."""
    return digest(spec.tenant, spec.uid, document_id)


def version_key(document: DocumentVersion) -> str:
    # With the id in it, two documents with equal text never share a version.
    return digest(document.document_id, document.content_hash)


def tag(key: str, value: str) -> str:
    return digest(key, value)


def check_uid(uid: str) -> None:
    if not HEX_KEY.fullmatch(uid):
        raise ValueError(f"a collection uid is 32 lowercase hex digits, got {uid!r}")


def literal(value: str) -> str:
    """`value` as an expression literal; only digests and uids, hex by construction, pass."""
    if not HEX_KEY.fullmatch(value):
        raise ValueError(f"an expression literal is 32 lowercase hex digits, got {value!r}")
    return f'"{value}"'


def literals(values) -> str:
    return "[" + ", ".join(literal(value) for value in values) + "]"
