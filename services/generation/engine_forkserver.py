"""vLLM's engine core forked from a process that has imported it already, for warm starts.

vLLM starts its engine core in a child process, and on CPU it forces multiprocessing's
`spawn` (vllm/platforms/cpu.py): the child imports torch and vLLM all over again, about 11 s
on one core here, the largest part of a cold start after the parent's own imports. A warm
process (services/generation/warm_start.py) therefore also starts a multiprocessing
forkserver that preloads vLLM's engine core, and has vLLM start its engine core from it: the
child is forked with its imports done.

A forkserver's children inherit the environment the forkserver started with, not the one
the parent has when it starts them; vLLM sets variables for its engine core just before (and
the warm process gets its assignment after the forkserver started). So each child is given
the parent's environment as it is at `start()`, before it runs.

This replaces `get_mp_context` in `vllm.v1.engine.utils` (pinned vLLM 0.32.0), the one place
vLLM picks how to start its engine core; nothing else of vLLM's changes. The engine core's
CPU worker is still spawned: its OpenMP runtime takes its thread count and binding from the
environment when it loads, which a forked worker would have done in the forkserver.
"""
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os

PRELOAD = ["vllm.v1.engine.core", __name__]


class _EnvironmentCarryingProcess(multiprocessing.context.ForkServerProcess):
    def start(self) -> None:
        self._environment = dict(os.environ)
        super().start()

    def run(self) -> None:
        os.environ.clear()
        os.environ.update(self._environment)
        super().run()


class _EngineCoreContext(multiprocessing.context.ForkServerContext):
    Process = _EnvironmentCarryingProcess


def _nothing() -> None:
    pass


def start_engine_forkserver() -> None:
    """Starts the forkserver and waits until its imports are done (one empty child proves
    it), then has vLLM start engine cores from it."""
    context = _EngineCoreContext()
    multiprocessing.forkserver.set_forkserver_preload(PRELOAD)
    probe = context.Process(target=_nothing, name="forkserver-probe")
    probe.start()
    probe.join()
    if probe.exitcode != 0:
        raise RuntimeError(f"the engine forkserver's first child exited with {probe.exitcode}")

    import vllm.v1.engine.utils as engine_utils

    engine_utils.get_mp_context = lambda: context
