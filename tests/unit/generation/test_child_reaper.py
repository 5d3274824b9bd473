"""The watchdog that stops the engine's children when the server dies without cleaning up."""
import os
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[3]


def watchdog() -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'libs'}{os.pathsep}{REPO}"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.generation.child_reaper"],
        stdin=subprocess.PIPE, cwd=REPO, env=env,
    )


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def line(process: subprocess.Popen, start_offset: float = 0.0) -> bytes:
    started = psutil.Process(process.pid).create_time() + start_offset
    return f"{process.pid} {started!r}\n".encode()


def test_listed_processes_are_terminated_when_the_pipe_closes():
    child, guard = sleeper(), watchdog()
    guard.stdin.write(line(child))
    guard.stdin.close()  # what the kernel does when the server dies
    assert guard.wait(timeout=20) == 0
    assert child.wait(timeout=5) == -15


def test_release_leaves_the_processes_alone():
    child, guard = sleeper(), watchdog()
    try:
        guard.stdin.write(line(child) + b"release\n")
        guard.stdin.close()
        assert guard.wait(timeout=20) == 0
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_pid_with_another_start_time_is_not_killed():
    child, guard = sleeper(), watchdog()
    try:
        guard.stdin.write(line(child, start_offset=-1000.0))
        guard.stdin.close()
        assert guard.wait(timeout=20) == 0
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
