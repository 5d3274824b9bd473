"""The classifier behind a queue: texts from every call in flight go to the model in batches,
on one worker thread, so that the event loop never waits for torch and one batch of many
texts costs a fraction of as many single calls (measured here: ~17 ms for one short text,
~6 ms a text in a batch of 32)."""
import asyncio
from typing import Protocol

from meshllm.tasks import cancel_and_wait


class Classifier(Protocol):
    def scores(self, texts: list[str]) -> list[dict[int, float]]: ...


class ClassifierQueue:
    def __init__(self, classifier: Classifier, max_batch: int = 32):
        self._classifier = classifier
        self._max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def scores(self, text: str) -> dict[int, float]:
        """The classifier's score of `text` for each category it knows."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="classifier")
        return await future

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            batch = self._waiting[:self._max_batch]
            del self._waiting[:self._max_batch]
            if not self._waiting:
                self._arrived.clear()
            batch = [(text, future) for text, future in batch if not future.done()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._classifier.scores,
                                                  [text for text, _ in batch])
            except Exception as error:  # the callers decide what a failed judgement means
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            await cancel_and_wait(self._worker)
