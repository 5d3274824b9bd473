"""A background thread's death reaches its owner on the loop, with the reason."""
import asyncio

from meshllm.supervised_thread import SupervisedThread


async def run_to_end(target) -> tuple[SupervisedThread, list[str]]:
    reasons: list[str] = []

    async def on_died(reason: str) -> None:
        reasons.append(reason)

    thread = SupervisedThread(target, "renewal", asyncio.get_running_loop(), on_died)
    thread.start()
    await thread.join()
    for _ in range(100):  # the report is scheduled on this loop from the thread
        if reasons:
            break
        await asyncio.sleep(0.01)
    return thread, reasons


async def test_a_thread_that_raises_reports_why_on_the_loop():
    def broken() -> None:
        raise RuntimeError("the registry refused the replica")

    thread, reasons = await run_to_end(broken)
    assert reasons == [thread.died]
    assert "renewal died: RuntimeError: the registry refused the replica" in thread.died


async def test_a_thread_that_returns_was_stopped_and_reports_nothing():
    thread, reasons = await run_to_end(lambda: None)
    assert reasons == [] and thread.died is None
