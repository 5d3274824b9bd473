"""Ending background tasks without swallowing the caller's own cancellation."""
import asyncio


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancels `task` and returns once it has ended.

    The task's CancelledError is the expected outcome and goes no further; a cancellation of
    the *calling* task while it waits is passed on (`cancelling()`), so stopping a helper
    never swallows the cancel meant for its owner."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
