"""One real generation replica (vLLM on the tiny model) for the whole session."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
READY = re.compile(r"^READY port=(\d+)$", re.MULTILINE)
START_TIMEOUT_SECONDS = 240


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def generation_replica(tmp_path_factory):
    """Starts `python -m services.generation` as a process-group leader; yields host:port.

    Teardown sends SIGTERM (the drain path, which also stops vLLM's engine core), then
    kills whatever is left of the group."""
    logs = tmp_path_factory.mktemp("generation")
    stdout_path, stderr_path = logs / "stdout.log", logs / "stderr.log"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'libs'}{os.pathsep}{REPO}",
        "HF_HUB_OFFLINE": "1",
        "MESHLLM_ENGINE": "vllm",
        "MESHLLM_GENERATION_CONTROLPLANE_ADDRESS": "",
        "MESHLLM_GENERATION_KV_CACHE_GIB": "0.5",
        "MESHLLM_GENERATION_MAX_MODEL_LEN": "2048",
        "MESHLLM_GENERATION_DRAIN_GRACE_SECONDS": "2",
    }
    env.pop("MESHLLM_MODEL", None)  # the default: the tiny model, built if missing
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.generation"],
            cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (match := READY.search(stdout_path.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = stderr_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"generation replica did not print READY (exit {process.poll()}):\n{tail}")
            time.sleep(0.2)
        yield f"127.0.0.1:{match.group(1)}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
