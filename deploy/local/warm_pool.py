"""Warm generation processes kept ready for the autoscaler (services/generation/warm_start.py):
a replica the autoscaler asks for is one of them given its assignment, so its start pays the
model load and not the imports. Taking one starts its successor in the background."""
import asyncio
from collections.abc import Awaitable, Callable

from deploy.local.supervisor import ManagedProcess
from meshllm.logging import get_logger
from meshllm.tasks import cancel_and_wait

log = get_logger(__name__)


class WarmPool:
    def __init__(self, size: int, new_process: Callable[[], ManagedProcess],
                 start: Callable[[ManagedProcess], Awaitable[object]]):
        self._size = size
        self._new_process = new_process
        self._start = start
        self._ready: list[ManagedProcess] = []
        self._filling: set[asyncio.Task] = set()
        self.taken = 0
        """Warm processes that became replicas."""

    def fill(self) -> None:
        """Starts warm processes until `size` are ready or starting."""
        for _ in range(self._size - len(self._ready) - len(self._filling)):
            task = asyncio.ensure_future(self._start_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    def take(self) -> ManagedProcess | None:
        """A warm process, or None when none is ready; its successor starts now."""
        while self._ready:
            process = self._ready.pop(0)
            if process.process.returncode is None:
                self.taken += 1
                self.fill()
                return process
        return None

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def close(self) -> None:
        for task in list(self._filling):
            await cancel_and_wait(task)

    async def _start_one(self) -> None:
        process = self._new_process()
        try:
            await self._start(process)
        except RuntimeError as error:
            log.error("warm_process_failed", name=process.name, detail=str(error))
            return
        self._ready.append(process)
        log.info("warm_process_ready", name=process.name, warm=len(self._ready))
