"""The autoscaler under a ramp: 1 → 64 concurrent streams on the sim engine, with the local
supervisor starting generation replicas as the control plane asks.

    make bench        (python -m bench.scaling_ramp --help for the knobs)

Each step holds its concurrency for `--step-seconds` (closed loop: every client sends its
next call as soon as the last one ended) and prints TTFT p50/p99 with the replica counts the
autoscaler wanted and had at the step's end, for the generation pool and the routers. Sim
replicas "load" for `--load-seconds`, so a scale-up costs what a model load would."""
import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

import grpc

from bench.overhead import one_stream, requests
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2_grpc
from bench.tenants import set_dev_tenant_policy, unmoderated
from meshllm.api_key import KeyedStub

SCALING = """
[defaults]
stable_window_seconds = {stable}
panic_window_seconds = {panic}
scale_down_delay_seconds = {stable}

[services.router]
target_concurrency = {router_target}

[pools.default]
min_replicas = 1
max_replicas = {max_replicas}
target_concurrency = {target}
"""


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def step(stub, request, concurrency: int, seconds: float) -> list[float]:
    ttfts: list[float] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            ttft, _, _ = await one_stream(stub, request)
            ttfts.append(ttft)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return ttfts


async def replicas(scaling) -> dict[str, tuple[int, int]]:
    """(wanted, ready) by service."""
    status = await scaling.GetScalingStatus(scaling_pb2.GetScalingStatusRequest(), timeout=5)
    return {unit.service: (unit.desired_replicas, unit.ready_replicas) for unit in status.units}


async def main(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ramp-"))
    (workdir / "scaling.toml").write_text(SCALING.format(
        stable=args.stable_window, panic=args.panic_window, max_replicas=args.max_replicas,
        target=args.target, router_target=args.router_target))
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", workdir=workdir, autoscale=True,
        scaling_config=str(workdir / "scaling.toml"),
        generation_env=(
            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", str(args.ttft)),
            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", str(args.itl)),
            ("MESHLLM_GENERATION_SIM_LOAD_SECONDS", str(args.load_seconds)),
            # One sim replica runs this many streams at once, like a small GPU would.
            ("MESHLLM_GENERATION_MAX_RUNNING_REQUESTS", str(args.replica_slots)),
            ("MESHLLM_GENERATION_LOG_LEVEL", "warning"))))
    _, request = requests(args.max_tokens)
    rows = []
    async with mesh.running(generation_replicas=1):
        await set_dev_tenant_policy(mesh, unmoderated())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}") as ch, \
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{mesh.options.ports.controlplane}") as control:
            stub = KeyedStub(inference_pb2_grpc.InferenceServiceStub(ch), mesh.api_key)
            scaling = scaling_pb2_grpc.ScalingServiceStub(control)
            for concurrency in args.ramp:
                ttfts = await step(stub, request, concurrency, args.step_seconds)
                counts = await replicas(scaling)
                rows.append((concurrency, len(ttfts), quantile_ms(ttfts, .5),
                             quantile_ms(ttfts, .99), counts.get("generation", (0, 0)),
                             counts.get("router", (0, 0))))
    print(f"\nmeshllm bench: autoscaling ramp, sim engine (ttft {args.ttft * 1000:.0f} ms, itl "
          f"{args.itl * 1000:.0f} ms, {args.max_tokens} tokens, {args.replica_slots} streams "
          f"per replica, {args.load_seconds:g} s load), pool target {args.target:g} in flight "
          f"per replica, router target {args.router_target:g}, {args.step_seconds:g} s a step, "
          f"{platform.machine()}")
    print("| streams | calls | TTFT p50 / p99 ms | generation replicas wanted / ready "
          "| router replicas wanted / ready |")
    print("|---|---|---|---|---|")
    for concurrency, calls, p50, p99, generation, router in rows:
        print(f"| {concurrency} | {calls} | {p50:.1f} / {p99:.1f} | {generation[0]} / "
              f"{generation[1]} | {router[0]} / {router[1]} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ramp", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ttft", type=float, default=0.02, help="sim time to first token, s")
    parser.add_argument("--itl", type=float, default=0.005, help="sim inter-token latency, s")
    parser.add_argument("--load-seconds", type=float, default=2.0,
                        help="how long a sim replica takes to start")
    parser.add_argument("--replica-slots", type=int, default=16,
                        help="streams one replica runs at once")
    parser.add_argument("--target", type=float, default=12.0,
                        help="the pool's target concurrency per replica")
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--router-target", type=float, default=24.0,
                        help="calls in flight per router the autoscaler aims at")
    parser.add_argument("--stable-window", type=float, default=10.0)
    parser.add_argument("--panic-window", type=float, default=2.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
