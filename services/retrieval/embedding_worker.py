"""The embedding model on one thread of its own, so that the event loop never waits for torch.

Queries go before documents: a bulk load hands its chunks over in batches, and a search that
arrives meanwhile waits for at most the batch in progress, not the whole load. Queries that
wait together are embedded in one forward pass."""
import asyncio
import itertools
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from meshllm.sentence_embeddings import EMBEDDING_BATCH, SentenceEncoder

_QUERY, _DOCUMENT, _STOP = 0, 1, 2


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    texts: list[str] = field(compare=False)
    future: asyncio.Future | None = field(compare=False)
    loop: asyncio.AbstractEventLoop | None = field(compare=False)


class EmbeddingWorker:
    def __init__(self, encoder: SentenceEncoder):
        self._encoder = encoder
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._sequence = itertools.count()
        # A daemon: a process told to stop does not wait for a bulk load's embeddings.
        self._thread = threading.Thread(target=self._run, name="embedding", daemon=True)
        self._thread.start()

    @property
    def dimension(self) -> int:
        return self._encoder.dimension

    @property
    def tokenizer(self):
        return self._encoder.tokenizer

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self._submit(_QUERY, [text]))[0]

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        """One row a text, in order; embedded EMBEDDING_BATCH at a time."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        batches = [texts[first:first + EMBEDDING_BATCH]
                   for first in range(0, len(texts), EMBEDDING_BATCH)]
        return np.concatenate(await asyncio.gather(
            *(self._submit(_DOCUMENT, batch) for batch in batches)))

    def close(self) -> None:
        self._jobs.put(_Job(_STOP, next(self._sequence), [], None, None))

    async def _submit(self, priority: int, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(priority, next(self._sequence), texts, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job.priority == _STOP:
                return
            jobs = [job]
            if job.priority == _QUERY:
                jobs += self._more_queries()
            texts = [text for each in jobs for text in each.texts]
            try:
                embeddings = self._encoder.embed(texts)
            except Exception as error:  # the callers answer for it
                for each in jobs:
                    each.loop.call_soon_threadsafe(_fail, each.future, error)
                continue
            first = 0
            for each in jobs:
                rows = embeddings[first:first + len(each.texts)]
                first += len(each.texts)
                each.loop.call_soon_threadsafe(_resolve, each.future, rows)

    def _more_queries(self) -> list[_Job]:
        more = []
        while len(more) < EMBEDDING_BATCH - 1:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job.priority != _QUERY:
                self._jobs.put(job)  # keeps its place: its sequence number did not change
                break
            more.append(job)
        return more


def _resolve(future: asyncio.Future, rows: np.ndarray) -> None:
    if not future.done():  # its caller may have gone
        future.set_result(rows)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
