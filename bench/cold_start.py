"""What a cold start costs on the real engine (vLLM, the tiny model), side by side in one run:

- truly cold: a generation process started from nothing, until the first token of its first
  call (imports, model load, engine start, serving, the call);
- warm pool: a process that imported torch and vLLM already (services/generation/
  warm_start.py) given its assignment, until the first token of its first call;
- warm replica: the first token of a call to a replica that already serves.

    make bench        (python -m bench.cold_start --help for the knobs)

The processes are the mesh's own generation replicas, placed on the cores as the local mesh
places them (deploy/local/cpu_layout.py), called directly: the mesh's own part of a scale from
zero (the autoscaler's tick, the router's wait, Envoy's first health check; about a second)
comes on top of each cold row, the same for both."""
import argparse
import asyncio
import platform
import statistics
import sys
import time

import grpc

from deploy.local.cpu_layout import cpu_layout
from deploy.local.supervisor import ManagedProcess
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from services.generation.config import TINY_MODEL_DIR
from services.generation.warm_start import WARM_ENV


def generation_process(name: str, warm: bool) -> ManagedProcess:
    layout = cpu_layout("vllm", 1)
    env = {"MESHLLM_ENGINE": "vllm", "MESHLLM_MODEL": str(TINY_MODEL_DIR),
           "MESHLLM_GENERATION_REPLICA_ID": name, "MESHLLM_GENERATION_HOST": "127.0.0.1",
           "MESHLLM_GENERATION_CONTROLPLANE_ADDRESS": "",  # called directly: no registry
           "MESHLLM_GENERATION_METRICS_PORT": "-1", "MESHLLM_GENERATION_LOG_LEVEL": "warning",
           **(layout.engine_env() if layout else {})}
    if warm:
        env[WARM_ENV] = "true"
    return ManagedProcess(name, [sys.executable, "-m", "services.generation"], env=env,
                          cpus=layout.engine if layout else (), warm=warm)


async def first_token(port: int) -> float:
    """Seconds from the call to its first delta."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        began = time.perf_counter()
        async for event in stub.Generate(generation_pb2.GenerateRequest(
                prompt="a cold start", sampling={"max_tokens": 4}), timeout=120):
            if event.HasField("delta"):
                return time.perf_counter() - began
    raise RuntimeError("the stream ended without a token")


async def truly_cold(round_: int) -> tuple[float, ManagedProcess]:
    process = generation_process(f"cold-{round_}", warm=False)
    began = time.perf_counter()
    await process.start(timeout=600)
    await first_token(process.port)
    return time.perf_counter() - began, process


async def warm_pool_start(round_: int) -> float:
    process = generation_process(f"warm-{round_}", warm=True)
    await process.start(timeout=600)  # imports done: it waits for an assignment
    try:
        began = time.perf_counter()
        await process.assign(f"assigned-{round_}", {"MESHLLM_GENERATION_REPLICA_ID":
                                                    f"assigned-{round_}"}, timeout=600)
        await first_token(process.port)
        return time.perf_counter() - began
    finally:
        await process.stop()


async def main(args) -> None:
    cold, warm, replica = [], [], []
    for round_ in range(args.rounds):
        seconds, process = await truly_cold(round_)
        cold.append(seconds)
        try:
            replica.extend([await first_token(process.port) for _ in range(3)])
        finally:
            await process.stop()
        warm.append(await warm_pool_start(round_))
    print(f"\nmeshllm bench: cold starts, vLLM on the tiny model, {args.rounds} round(s), "
          f"{platform.machine()}")
    print("| start | time to first token, median s |")
    print("|---|---|")
    print(f"| truly cold (new process) | {statistics.median(cold):.2f} |")
    print(f"| warm pool (engine imported, engine core forked) | {statistics.median(warm):.2f} |")
    print(f"| warm replica | {statistics.median(replica):.3f} |")
    print(f"| warm pool / truly cold | {statistics.median(warm) / statistics.median(cold):.2f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
