"""A throwaway redis-server for tests: no persistence, its own temp dir, a free port on
127.0.0.1 that it keeps across `stop()` and `start()`, so a test can kill Redis and bring it
back where its clients expect it.

    async with running_redis_server(tmp_path) as server:
        counters = RedisWindowCounters(server.url)

Without the binary a test skips locally, but fails in CI (CI=true), where it must exist."""
import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_DEBIAN_PATH = "/usr/bin/redis-server"


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        _DEBIAN_PATH if os.access(_DEBIAN_PATH, os.X_OK) else None)
    if found is None:
        reason = "redis-server is not installed (Debian: apt-get install -y redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, binary: str):
        self.directory = directory
        self.port = _free_port()
        self._binary = binary
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, ready_within_seconds: float = 10.0) -> None:
        log = open(self.directory / "redis.log", "ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                self._binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        finally:
            log.close()
        async with asyncio.timeout(ready_within_seconds):
            while not await self._answers_ping():
                if self._process.returncode is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}: "
                                       f"{(self.directory / 'redis.log').read_text()[-2000:]}")
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Kills Redis outright (SIGKILL), as a crash would: nothing is saved."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return await reader.readline() == b"+PONG\r\n"
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def running_redis_server(directory: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory, redis_server_binary())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
