"""The embedding thread: queries before documents, waiting queries in one pass, a failure
answered to its callers."""
import asyncio
import threading

import numpy as np
import pytest

from services.retrieval.embedding_worker import EmbeddingWorker


class RecordingEncoder:
    """Embeds a text as [len(text)]; the first call waits until `release` is set, so that
    the test can queue work behind it."""

    dimension = 1
    tokenizer = None

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.calls:
            self.release.wait(5)
        self.calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.array([[float(len(text))] for text in texts], dtype=np.float32)


@pytest.fixture
def encoder():
    return RecordingEncoder()


@pytest.fixture
def worker(encoder):
    worker = EmbeddingWorker(encoder)
    yield worker
    encoder.release.set()
    worker.close()


async def test_queries_waiting_behind_a_batch_go_before_the_documents_queued_earlier(
        encoder, worker):
    first = asyncio.create_task(worker.embed_documents(["a" * 3]))
    await asyncio.sleep(0.05)  # the worker now holds the first batch
    documents = asyncio.create_task(worker.embed_documents(["bb"] * 40))
    await asyncio.sleep(0.05)
    queries = [asyncio.create_task(worker.embed_query(q)) for q in ("q1", "q22", "q333")]
    await asyncio.sleep(0.05)
    encoder.release.set()
    assert [float(e[0]) for e in await asyncio.gather(*queries)] == [2.0, 3.0, 4.0]
    assert (await documents).shape == (40, 1) and (await first).shape == (1, 1)
    assert encoder.calls[1] == ["q1", "q22", "q333"]  # together, before the 40 documents
    assert [len(call) for call in encoder.calls[2:]] == [32, 8]


async def test_a_failed_embedding_reaches_its_caller_and_the_worker_goes_on(encoder, worker):
    encoder.release.set()
    with pytest.raises(RuntimeError, match="model failed"):
        await worker.embed_query("boom")
    assert float((await worker.embed_query("fine"))[0]) == 4.0
