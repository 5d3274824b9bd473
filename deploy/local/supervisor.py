"""Runs the mesh's processes on one machine: start in order, wait until each is ready,
stop them all (process groups, so vLLM's engine-core children go too)."""
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

READY_LINE = re.compile(r"READY port=(\d+)")
WARM_LINE = "WARM"
"""What a warm generation process prints once it imported its engine (services/generation/
warm_start.py); it then waits for its assignment on stdin."""
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
    warm: bool = False
    """Started warm: `start` returns at its WARM line; `assign` makes it a replica."""
    process: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task | None = None
    _ready: asyncio.Future | None = None
    _warmed: asyncio.Future | None = None

    async def start(self, timeout: float) -> "ManagedProcess":
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.PIPE if self.warm else None,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=OUTPUT_LINE_LIMIT,
        )
        if self.cpus:
            # Set as soon as it exists: the new process is still one thread starting Python,
            # and every thread and child it starts later inherits the set. Not in preexec_fn:
            # Python code between fork and exec in a process with threads (gRPC's, here) can
            # crash the child (seen: a segfault in an at-fork handler).
            with contextlib.suppress(ProcessLookupError):  # it exited: the wait below says so
                os.sched_setaffinity(self.process.pid, self.cpus)
        loop = asyncio.get_running_loop()
        self._ready, self._warmed = loop.create_future(), loop.create_future()
        self._pump = asyncio.create_task(self._forward_output())
        try:
            if self.warm:
                await asyncio.wait_for(asyncio.shield(self._warmed), timeout)
            elif self.ready_probe is None:
                self.port = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
            else:
                await asyncio.wait_for(self._probe_until_ready(), timeout)
        except (asyncio.TimeoutError, ProcessExited) as error:
            await self.stop(grace=1)
            raise RuntimeError(f"{self.name} did not become ready: {error!r}") from None
        return self

    async def assign(self, name: str, env: dict[str, str], timeout: float) -> "ManagedProcess":
        """Makes a warm process the replica `name` with `env` (on top of its own), and
        returns once it serves."""
        self.name, self.env, self.warm = name, {**self.env, **env}, False
        self.process.stdin.write(json.dumps(self.env).encode() + b"\n")
        try:
            await self.process.stdin.drain()
            self.port = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (asyncio.TimeoutError, ProcessExited, ConnectionError) as error:
            await self.stop(grace=1)
            raise RuntimeError(f"{self.name} did not become ready: {error!r}") from None
        return self

    async def _probe_until_ready(self) -> None:
        while not await self.ready_probe():
            if self.process.returncode is not None:
                raise ProcessExited(self.process.returncode)
            await asyncio.sleep(0.1)

    async def _forward_output(self) -> None:
        while line := await self.process.stdout.readline():
            sys.stderr.buffer.write(f"[{self.name}] ".encode() + line)  # a warm one gets named
            sys.stderr.buffer.flush()
            text = line.decode(errors="replace")
            if not self._ready.done() and (match := READY_LINE.search(text)):
                self._ready.set_result(int(match.group(1)))
            elif not self._warmed.done() and text.strip() == WARM_LINE:
                self._warmed.set_result(None)
        await self.process.wait()
        for future in (self._ready, self._warmed):
            if not future.done():
                future.set_exception(ProcessExited(self.process.returncode))
                future.exception()  # retrieved: only one of the two is ever awaited

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
