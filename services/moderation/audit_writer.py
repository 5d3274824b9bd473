"""The verdict trail's front door: verdicts are queued in memory and written in batches, so a
moderation call never waits for a disk sync.

A batch that fails to write stays at the head of the queue and is tried again with growing
pauses; only when the queue is full are new verdicts dropped, and that is logged as an error,
because a trail with holes is what the trail exists to prevent."""
import asyncio
from collections import deque

from meshllm.logging import get_logger
from services.moderation.audit_store import AuditStore, VerdictEntry

log = get_logger(__name__)

_FIRST_RETRY_SECONDS = 0.05
_LONGEST_RETRY_SECONDS = 5.0
_DRAIN_ATTEMPTS = 3
"""Tries per batch when shutting down; after that the rest is dropped and logged."""


class AuditWriter:
    def __init__(self, store: AuditStore, *, flush_seconds: float = 0.05, max_batch: int = 500,
                 max_pending: int = 100_000, idle_checkpoint_seconds: float = 10.0):
        self._store = store
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._idle_checkpoint_seconds = idle_checkpoint_seconds
        self._pending: deque[VerdictEntry] = deque()
        self._wake = asyncio.Event()
        """Set when a batch is full, or to stop."""
        self._closing_event = asyncio.Event()
        self._closing = False
        self._stopped = False
        self._dropped = 0
        """Verdicts dropped since the last successful write."""
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the background flushing; call it on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    def submit(self, entry: VerdictEntry) -> None:
        """Queues one verdict; never blocks."""
        if self._stopped:
            self._drop(1, "a verdict came after the audit writer was drained")
            return
        if len(self._pending) >= self._max_pending:
            self._drop(1, "the audit queue is full: the trail database is too slow or down")
            return
        self._pending.append(entry)
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Writes what is queued (giving up on a batch after a few failed tries), then stops."""
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        if self._task is not None:
            # Shielded: a caller that stops waiting must not cancel a write whose outcome
            # would then be unknown.
            await asyncio.shield(self._task)
        else:
            await self._flush()
        self._stopped = True
        if self._dropped:
            log.error("audit writer stopped; verdicts were dropped from the trail",
                      dropped=self._dropped)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._idle_checkpoint_seconds
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush()
            if loop.time() >= next_sweep and not self._closing:
                next_sweep = loop.time() + self._idle_checkpoint_seconds
                await self._checkpoint_idle_chains()
        await self._flush()

    async def _checkpoint_idle_chains(self) -> None:
        try:
            await self._store.checkpoint_idle_chains()
        except Exception as error:
            log.error("audit checkpoint of idle chains failed; tried again later",
                      error=str(error), retry_in_seconds=self._idle_checkpoint_seconds)

    async def _flush(self) -> None:
        """Writes every queued verdict, a batch at a time."""
        while self._pending:
            batch = [self._pending[index]
                     for index in range(min(self._max_batch, len(self._pending)))]
            if not await self._write(batch):
                self._drop(len(batch), "the trail database kept failing while shutting down")
            for _ in batch:
                self._pending.popleft()

    async def _write(self, batch: list[VerdictEntry]) -> bool:
        """Appends the batch, retrying with growing pauses; False only once shutting down and
        out of tries."""
        pause = _FIRST_RETRY_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._store.append(batch)
            except Exception as error:
                if self._closing and attempt >= _DRAIN_ATTEMPTS:
                    log.error("audit write failed", error=str(error), attempt=attempt,
                              verdicts=len(batch))
                    return False
                log.error("audit write failed; retrying", error=str(error), attempt=attempt,
                          retry_in_seconds=pause, verdicts=len(batch),
                          queued=len(self._pending))
                try:  # drain cuts the pause short: shutting down has a deadline
                    await asyncio.wait_for(self._closing_event.wait(), pause)
                except TimeoutError:
                    pass
                pause = min(pause * 2, _LONGEST_RETRY_SECONDS)
                continue
            if self._dropped:
                log.error("audit writes recovered; verdicts were dropped from the trail",
                          dropped=self._dropped)
                self._dropped = 0
            return True

    def _drop(self, count: int, why: str) -> None:
        if not self._dropped:
            # The first drop of a run is logged at once; the total when writes recover.
            log.error("audit verdicts dropped: the trail will miss them", why=why,
                      dropped=count, queued=len(self._pending))
        self._dropped += count
