"""A thread whose unexpected end is reported to its owner on the event loop."""
import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable

from meshllm.logging import get_logger

log = get_logger(__name__)

DeathHandler = Callable[[str], Awaitable[None]]


class SupervisedThread:
    """Runs `target` in a daemon thread. If it ends by raising, the reason is logged and
    `on_died(reason)` is scheduled on `loop`, so the owner can act on it (a replica whose
    lease renewal died turns NOT_SERVING). A `target` that returns was asked to stop."""

    def __init__(self, target: Callable[[], None], name: str, loop: asyncio.AbstractEventLoop,
                 on_died: DeathHandler | None = None):
        self._target = target
        self._loop = loop
        self._on_died = on_died
        self.died: str | None = None
        """Why the thread ended by an exception; None while it runs or after a clean stop."""
        # A new thread starts with an empty context: carry the logging fields bound so far.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=name,
                                        daemon=True)

    @property
    def name(self) -> str:
        return self._thread.name

    def start(self) -> None:
        self._thread.start()

    async def join(self) -> None:
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as error:  # noqa: BLE001 - whatever ends it, the owner must know
            self.died = f"{self.name} died: {type(error).__name__}: {error}"
            log.error("thread_died", thread=self.name, reason=self.died, exc_info=True)
            self._report(self.died)

    def _report(self, reason: str) -> None:
        if self._on_died is None:
            return
        handling = self._on_died(reason)
        try:
            asyncio.run_coroutine_threadsafe(handling, self._loop)
        except RuntimeError:  # the loop is closed: the process is on its way out anyway
            handling.close()
            log.warning("thread_death_unreported", thread=self.name, reason=reason)
