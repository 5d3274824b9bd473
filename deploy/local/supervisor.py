"""Runs the mesh's processes on one machine: start in order, wait until each is ready,
stop them all (process groups, so vLLM's engine-core children go too)."""
import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

READY_LINE = re.compile(r"READY port=(\d+)")
# Longer than a service's drain grace (MESHLLM_*_DRAIN_GRACE_SECONDS, 20 s) plus engine shutdown.
STOP_GRACE_SECONDS = 30.0
OUTPUT_LINE_LIMIT = 1024 * 1024


@dataclass
class ManagedProcess:
    """One child process in its own process group, its output prefixed and passed on.

    `ready` is either a regex its stdout prints once it serves (the match's first group is
    its port) or a coroutine that returns once the process answers."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_probe: Callable[[], Awaitable[bool]] | None = None
    cpus: tuple[int, ...] = ()
    """Cores the process (and every thread and child it starts) may run on; () is any."""
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task | None = None

    async def start(self, timeout: float) -> "ManagedProcess":
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=OUTPUT_LINE_LIMIT,
            # Set before exec, so that no thread of the new process starts anywhere else.
            preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
        )
        ready = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._forward_output(ready))
        try:
            if self.ready_probe is None:
                self.port = await asyncio.wait_for(ready, timeout)
            else:
                await asyncio.wait_for(self._probe_until_ready(), timeout)
        except (asyncio.TimeoutError, ProcessExited) as error:
            await self.stop(grace=1)
            raise RuntimeError(f"{self.name} did not become ready: {error!r}") from None
        finally:
            ready.cancel()  # nobody waits for it any more
        return self

    async def _probe_until_ready(self) -> None:
        while not await self.ready_probe():
            if self.process.returncode is not None:
                raise ProcessExited(self.process.returncode)
            await asyncio.sleep(0.1)

    async def _forward_output(self, ready: asyncio.Future) -> None:
        prefix = f"[{self.name}] ".encode()
        while line := await self.process.stdout.readline():
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.buffer.flush()
            if not ready.done() and (match := READY_LINE.search(line.decode(errors="replace"))):
                ready.set_result(int(match.group(1)))
        await self.process.wait()
        if not ready.done():
            ready.set_exception(ProcessExited(self.process.returncode))

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the process itself, so it drains (vLLM's engine core, in the same group,
        would abort every request on a SIGTERM of its own); then SIGKILL to the whole group,
        once it has exited or the grace has run out, so no child outlives it."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except asyncio.TimeoutError:
            pass
        self.signal_group(signal.SIGKILL)  # also reaps children that outlived their parent
        await self.process.wait()
        if self._pump is not None:
            await self._pump

    async def kill(self) -> None:
        """kill -9, as a crash would: nothing drains, nothing deregisters."""
        self.signal_group(signal.SIGKILL)
        await self.process.wait()


class ProcessExited(Exception):
    """The process ended before it became ready."""


class Supervisor:
    """Owns every process it started; `stop_all` stops them newest first."""

    def __init__(self):
        self.processes: list[ManagedProcess] = []

    async def start(self, process: ManagedProcess, timeout: float = 120.0) -> ManagedProcess:
        self.processes.append(process)
        return await process.start(timeout)

    async def stop(self, process: ManagedProcess, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stops one process (it drains first) and forgets it."""
        await process.stop(grace)
        if process in self.processes:
            self.processes.remove(process)

    async def stop_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        for process in reversed(self.processes):
            await process.stop(grace)
        self.processes.clear()
