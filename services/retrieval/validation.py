"""What the retrieval API accepts; everything else is INVALID_ARGUMENT naming the field, before
anything is embedded or stored."""
import math
import re

import grpc
import numpy as np

from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from meshllm.errors import CallRefused
from services.retrieval.store import Filters, SearchMode

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DESCRIPTION = 1024
MAX_DOCUMENT_ID = 256
MAX_METADATA = 32
MAX_METADATA_VALUE = 256
MAX_QUERY = 4096
MAX_TOP_K = 100
DEFAULT_TOP_K = 5
MAX_FILTERS = 16
MAX_FILTER_VALUES = 100
MAX_DOCUMENT_IDS = 1000
DEFAULT_MAX_TOKENS = 128
DEFAULT_OVERLAP_TOKENS = 16
MIN_CHUNK_TOKENS = 16
MAX_CHUNK_TOKENS = 256
"""all-MiniLM-L6-v2 embeds at most 256 word pieces; a longer chunk would be embedded cut."""
_MODES = {r.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID, r.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
          r.SEARCH_MODE_DENSE: SearchMode.DENSE, r.SEARCH_MODE_KEYWORD: SearchMode.KEYWORD}


def invalid(field: str, message: str, reason: str = "INVALID_ARGUMENT") -> CallRefused:
    return CallRefused(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field)


def check_collection_name(name: str, field: str = "name") -> None:
    if not COLLECTION_NAME.fullmatch(name):
        raise invalid(field, f"{field} must be 1 to 64 letters, digits, '_', '-' or '.', "
                             f"starting with a letter or digit; got {name[:80]!r}",
                      "INVALID_COLLECTION_NAME")


def chunking(options: r.ChunkingOptions) -> tuple[int, int]:
    """(max_tokens, overlap_tokens) with the defaults filled in."""
    max_tokens = options.max_tokens or DEFAULT_MAX_TOKENS
    if not MIN_CHUNK_TOKENS <= max_tokens <= MAX_CHUNK_TOKENS:
        raise invalid("chunking.max_tokens",
                      f"chunking.max_tokens must be {MIN_CHUNK_TOKENS} to {MAX_CHUNK_TOKENS} "
                      f"(0 for {DEFAULT_MAX_TOKENS}); got {options.max_tokens}")
    overlap = options.overlap_tokens
    overlap = DEFAULT_OVERLAP_TOKENS if overlap == 0 else max(overlap, 0)
    if overlap > max_tokens // 2:
        raise invalid("chunking.overlap_tokens",
                      f"chunking.overlap_tokens must be at most half of max_tokens "
                      f"({max_tokens // 2}); got {options.overlap_tokens}")
    return max_tokens, overlap


def check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise invalid("description", f"description is {len(description)} characters; at most "
                                     f"{MAX_DESCRIPTION}")


def check_document(document: r.Document, number: int, max_bytes: int) -> None:
    """`number`: the document's place in the call, from 1, for the message."""
    where = f"document {number} ({document.id[:80]!r})" if document.id else f"document {number}"
    if not 0 < len(document.id) <= MAX_DOCUMENT_ID or _CONTROL.search(document.id):
        raise invalid("documents.id", f"{where}: id must be 1 to {MAX_DOCUMENT_ID} characters "
                                      "without control characters", "INVALID_DOCUMENT")
    if not document.text.strip():
        raise invalid("documents.text", f"{where}: text is empty", "INVALID_DOCUMENT")
    size = len(document.text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise invalid("documents.text", f"{where}: text is {size} bytes of UTF-8; at most "
                                        f"{max_bytes} (split the document)", "INVALID_DOCUMENT")
    if len(document.metadata) > MAX_METADATA:
        raise invalid("documents.metadata", f"{where}: {len(document.metadata)} metadata "
                                            f"entries; at most {MAX_METADATA}",
                      "INVALID_DOCUMENT")
    for key, value in document.metadata.items():
        if not METADATA_KEY.fullmatch(key):
            raise invalid("documents.metadata", f"{where}: metadata key {key[:80]!r} must be 1 "
                                                "to 64 letters, digits, '_', '-' or '.'",
                          "INVALID_DOCUMENT")
        if len(value) > MAX_METADATA_VALUE:
            raise invalid("documents.metadata", f"{where}: metadata value of {key!r} is "
                                                f"{len(value)} characters; at most "
                                                f"{MAX_METADATA_VALUE}", "INVALID_DOCUMENT")


def check_document_ids(ids, field: str = "document_ids", required: bool = False) -> None:
    if required and not ids:
        raise invalid(field, f"{field} is empty; name 1 to {MAX_DOCUMENT_IDS} documents")
    if len(ids) > MAX_DOCUMENT_IDS:
        raise invalid(field, f"{field} has {len(ids)} ids; at most {MAX_DOCUMENT_IDS}")
    for document_id in ids:
        if not 0 < len(document_id) <= MAX_DOCUMENT_ID:
            raise invalid(field, f"every id in {field} must be 1 to {MAX_DOCUMENT_ID} characters")


def filters(metadata_filters, document_ids, field: str = "filters") -> Filters:
    if len(metadata_filters) > MAX_FILTERS:
        raise invalid(field, f"{len(metadata_filters)} filters; at most {MAX_FILTERS}",
                      "INVALID_FILTER")
    for number, condition in enumerate(metadata_filters, 1):
        if not METADATA_KEY.fullmatch(condition.key):
            raise invalid(f"{field}.key", f"filter {number}: key {condition.key[:80]!r} must "
                                          "be 1 to 64 letters, digits, '_', '-' or '.'",
                          "INVALID_FILTER")
        if not 0 < len(condition.any_of) <= MAX_FILTER_VALUES:
            raise invalid(f"{field}.any_of", f"filter {number} ({condition.key}): any_of must "
                                             f"list 1 to {MAX_FILTER_VALUES} values; got "
                                             f"{len(condition.any_of)}", "INVALID_FILTER")
        if any(len(value) > MAX_METADATA_VALUE for value in condition.any_of):
            raise invalid(f"{field}.any_of", f"filter {number} ({condition.key}): values are "
                                             f"at most {MAX_METADATA_VALUE} characters",
                          "INVALID_FILTER")
    check_document_ids(document_ids)
    return Filters(document_ids=tuple(document_ids),
                   metadata=tuple((c.key, tuple(c.any_of)) for c in metadata_filters))


def search_mode(mode: int) -> SearchMode:
    if mode not in _MODES:
        raise invalid("mode", f"mode {mode} is unknown; use SEARCH_MODE_HYBRID, "
                              "SEARCH_MODE_DENSE or SEARCH_MODE_KEYWORD")
    return _MODES[mode]


def top_k(value: int, default: int = DEFAULT_TOP_K, most: int = MAX_TOP_K,
          field: str = "top_k") -> int:
    if value == 0:
        return default
    if not 1 <= value <= most:
        raise invalid(field, f"{field} must be 1 to {most} (0 for {default}); got {value}")
    return value


def check_query(query: str, field: str = "query") -> None:
    if len(query) > MAX_QUERY:
        raise invalid(field, f"{field} is {len(query)} characters; at most {MAX_QUERY}",
                      "INVALID_QUERY")


def query_embedding(values, dimension: int) -> np.ndarray | None:
    """The caller's query embedding, unit length; None when it sent none."""
    if not values:
        return None
    if len(values) != dimension:
        raise invalid("query_embedding", f"query_embedding has {len(values)} values; this "
                                         f"collection's embeddings have {dimension}",
                      "WRONG_EMBEDDING_DIMENSION")
    vector = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise invalid("query_embedding", "query_embedding must be finite and not all zero",
                      "INVALID_QUERY")
    return vector / norm
