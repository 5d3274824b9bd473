"""The engine forkserver's children run with the parent's environment as it is when they
start, not the one the forkserver started with: vLLM sets its engine core's variables just
before starting it, and a warm process gets its assignment after its forkserver started."""
import multiprocessing.forkserver

from services.generation import engine_forkserver


def report_environment(queue) -> None:
    queue.put(engine_forkserver.os.environ.get("MESHLLM_TEST_ASSIGNED"))


def test_a_forked_engine_core_sees_the_environment_set_after_the_forkserver_started(
        monkeypatch):
    monkeypatch.delenv("MESHLLM_TEST_ASSIGNED", raising=False)
    multiprocessing.forkserver.ensure_running()
    monkeypatch.setenv("MESHLLM_TEST_ASSIGNED", "replica-7")
    context = engine_forkserver._EngineCoreContext()
    queue = context.SimpleQueue()
    child = context.Process(target=report_environment, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get() == "replica-7"
