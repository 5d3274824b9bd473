"""A warm generation process: one that has imported its engine (torch and vLLM: most of a
cold start before the model loads) and waits to be told which replica to be.

The local supervisor keeps a few (`MESHLLM_LOCAL_WARM_POOL_SIZE`): when the autoscaler wants
a replica, one of them gets its assignment — the replica's environment, one JSON line on
stdin — and goes on as a replica started with that environment would: it loads the model,
serves, registers, prints READY. vLLM's engine core, a child process that would import
torch and vLLM again, is forked from a forkserver that has imported them already
(engine_forkserver.py). The line `WARM` on stdout says a process is ready to be assigned."""
import json
import os
import sys

WARM_ENV = "MESHLLM_GENERATION_WARM"


def is_warm_start() -> bool:
    return os.environ.get(WARM_ENV, "").lower() in ("1", "true")


def wait_for_assignment() -> None:
    """Imports the engine, prints WARM, then takes the assignment into os.environ; exits if
    the supervisor closes stdin first (it stopped, or needs no more replicas)."""
    if os.environ.get("MESHLLM_ENGINE", "vllm") == "vllm":
        from services.generation.engine_forkserver import start_engine_forkserver
        from services.generation.vllm_engine import import_vllm

        import_vllm()
        start_engine_forkserver()
    else:
        import services.generation.sim_engine  # noqa: F401
    print("WARM", flush=True)
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    assignment = json.loads(line)
    os.environ.update({str(key): str(value) for key, value in assignment.items()})
    os.environ.pop(WARM_ENV, None)
