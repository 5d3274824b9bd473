"""What the mesh costs a stream: one sim replica called directly vs. through Envoy and the
router, side by side in one run, at 1, 16 and 64 concurrent streams.

    make bench        (python -m bench.overhead --help for the knobs)

The sim engine has fixed time-to-first-token and inter-token latency, so any difference
between the two paths is the mesh's: Envoy's two hops, the router, the registry lookups."""
import argparse
import asyncio
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from bench.tenants import set_dev_tenant_policy, unmoderated
from meshllm.api_key import KeyedStub
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc


@dataclass
class PathResult:
    ttfts: list[float]
    tokens: int
    seconds: float
    gaps: list[float] = field(default_factory=list)
    """Seconds between consecutive deltas of a stream."""
    deltas: int = 0
    router_cpu: float = 0.0
    """CPU seconds the router process spent during the run (mesh path only)."""

    def gap_ms(self, quantile: float) -> float:
        ordered = sorted(self.gaps) or [0.0]
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def router_us_per_token(self) -> float:
        return 1e6 * self.router_cpu / self.tokens

    def ttft_ms(self, quantile: float) -> float:
        ordered = sorted(self.ttfts)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def requests(max_tokens: int):
    sampling = {"max_tokens": max_tokens}
    messages = {"messages": [{"role": inference_pb2.ROLE_USER, "content": "benchmark"}]}
    return (generation_pb2.GenerateRequest(chat=messages, sampling=sampling),
            inference_pb2.GenerateRequest(chat=messages, sampling=sampling))


async def one_stream(stub, request) -> tuple[float, int, list[float]]:
    started = time.perf_counter()
    ttft, tokens, arrivals = None, 0, []
    async for event in stub.Generate(request, timeout=120):
        kind = event.WhichOneof("event")
        if kind == "delta":
            arrivals.append(time.perf_counter())
            if ttft is None:
                ttft = arrivals[-1] - started
            tokens += len(event.delta.token_ids)
        elif kind == "finished":
            # Moderated deltas carry text only: the finished event counts what was delivered.
            tokens = event.finished.usage.completion_tokens or tokens
    return ttft, tokens, arrivals


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


async def run_path(stub, request, concurrency: int, rounds: int,
                   router: psutil.Process | None = None) -> PathResult:
    result = PathResult([], 0, 0.0)
    began, cpu_before = time.perf_counter(), cpu_seconds(router)
    for _ in range(rounds):
        streams = await asyncio.gather(*(one_stream(stub, request) for _ in range(concurrency)))
        for ttft, tokens, arrivals in streams:
            result.ttfts.append(ttft)
            result.tokens += tokens
            result.deltas += len(arrivals)
            result.gaps += [b - a for a, b in zip(arrivals, arrivals[1:])]
    result.seconds = time.perf_counter() - began
    result.router_cpu = cpu_seconds(router) - cpu_before
    return result


async def main(args) -> None:
    options = MeshOptions(
        ports=MeshPorts.free(), engine="sim", workdir=Path(tempfile.mkdtemp(prefix="bench-")),
        generation_env=(
            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", str(args.ttft)),
            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", str(args.itl)),
            ("MESHLLM_GENERATION_LOG_LEVEL", "warning"),
        ))
    mesh = LocalMesh(options)
    direct_request, mesh_request = requests(args.max_tokens)
    rows = []
    async with mesh.running(generation_replicas=1):
        await set_dev_tenant_policy(mesh, unmoderated())
        (replica,) = mesh.generation.values()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct, \
                grpc.aio.insecure_channel(f"127.0.0.1:{options.ports.public}") as public:
            direct_stub = generation_pb2_grpc.GenerationServiceStub(direct)
            mesh_stub = KeyedStub(inference_pb2_grpc.InferenceServiceStub(public), mesh.api_key)
            router = psutil.Process(mesh.router.process.pid)
            await run_path(direct_stub, direct_request, 4, 1)  # warm both paths' connections
            await run_path(mesh_stub, mesh_request, 4, 1)
            for concurrency in args.concurrency:
                rounds = max(args.min_streams // concurrency, 2)
                # Alternate the two paths so both see the same machine noise.
                direct_runs, mesh_runs = [], []
                for _ in range(args.repeats):
                    direct_runs.append(
                        await run_path(direct_stub, direct_request, concurrency, rounds))
                    mesh_runs.append(await run_path(mesh_stub, mesh_request, concurrency, rounds,
                                                    router))
                rows.append((concurrency, merge(direct_runs), merge(mesh_runs)))
    print_table(rows, args)


def merge(runs: list[PathResult]) -> PathResult:
    return PathResult([t for r in runs for t in r.ttfts], sum(r.tokens for r in runs),
                      sum(r.seconds for r in runs), [g for r in runs for g in r.gaps],
                      sum(r.deltas for r in runs), sum(r.router_cpu for r in runs))


def print_table(rows, args) -> None:
    print(f"\nmeshllm bench: sim engine (ttft {args.ttft * 1000:.0f} ms, itl "
          f"{args.itl * 1000:.0f} ms, {args.max_tokens} tokens/stream), "
          f"{platform.machine()} {platform.processor() or ''}")
    header = ("streams", "direct TTFT p50/p99 ms", "mesh TTFT p50/p99 ms",
              "overhead p50/p99 ms", "direct tok/s", "mesh tok/s", "mesh/direct",
              "delta gap p50 ms direct/mesh", "tokens/delta direct/mesh",
              "router CPU µs/token")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for concurrency, direct, through in rows:
        print(f"| {concurrency} | {direct.ttft_ms(.5):.1f} / {direct.ttft_ms(.99):.1f} "
              f"| {through.ttft_ms(.5):.1f} / {through.ttft_ms(.99):.1f} "
              f"| {through.ttft_ms(.5) - direct.ttft_ms(.5):+.1f} / "
              f"{through.ttft_ms(.99) - direct.ttft_ms(.99):+.1f} "
              f"| {direct.tokens_per_second:.0f} | {through.tokens_per_second:.0f} "
              f"| {through.tokens_per_second / direct.tokens_per_second:.3f} "
              f"| {direct.gap_ms(.5):.1f} / {through.gap_ms(.5):.1f} "
              f"| {direct.tokens / direct.deltas:.1f} / {through.tokens / through.deltas:.1f} "
              f"| {through.router_us_per_token:.1f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ttft", type=float, default=0.02, help="sim time to first token, s")
    parser.add_argument("--itl", type=float, default=0.005, help="sim inter-token latency, s")
    parser.add_argument("--min-streams", type=int, default=48,
                        help="streams per path per repeat, at least")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
