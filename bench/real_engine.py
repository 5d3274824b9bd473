"""The mesh against vLLM's own OpenAI server, on the real engine and the same model, in one
run; then how fast a cancel reaches the engine through the mesh.

    python -m bench.real_engine        (make bench runs it after the sim table)

Throughput: vLLM's server (`python -m vllm.entrypoints.openai.api_server`, started here from
the same venv with the same engine arguments as a generation replica) and the mesh (Envoy →
router → Envoy → one vLLM replica) each get the same closed-loop load — `--concurrency`
clients, each sending its next request when the last one ends, ~64-token prompts, 64 tokens
out, greedy — in interleaved rounds, so both see the same machine noise.

Cancel: N streams through the mesh, each past its first token, cancelled at once by the
client; the time until the replica's running count (GetLoad, polled directly) reaches 0."""
import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import psutil

from bench.tenants import set_dev_tenant_policy, unmoderated
from meshllm.api_key import KeyedStub
from deploy.local.cpu_layout import CpuLayout
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from deploy.local.ports import free_port
from deploy.local.supervisor import ManagedProcess
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from services.generation.config import TINY_MODEL_DIR
from services.generation.vllm_engine import GIB

SERVED_NAME = "tiny-llama"
KV_CACHE_GIB = 1.0  # a generation replica's default (MESHLLM_GENERATION_KV_CACHE_GIB)
MAX_MODEL_LEN = 2048


@dataclass
class Round:
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each serving process (not the engine's own) spent during the round."""


def prompt_of(tokens: int) -> str:
    """Text the tiny model's tokenizer reads as about `tokens` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL_DIR))
    words = ("the mesh streams tokens from a replica to the router and back to the client "
             "while envoy balances calls over live replicas").split()
    text = ""
    for index in range(10 * tokens):
        candidate = (text + " " + words[index % len(words)]).strip()
        if len(tokenizer.encode(candidate)) > tokens:
            return text
        text = candidate
    return text


async def closed_loop(one_request, concurrency: int, total: int) -> Round:
    result, remaining = Round(), [total]
    began = time.perf_counter()

    async def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                ttft, tokens = await one_request()
                result.ttfts.append(ttft)
                result.tokens += tokens
            except Exception:  # counted and shown: a benchmark must not hide failures
                result.errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def openai_request(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int):
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}

    async def one() -> tuple[float, int]:
        started, ttft, tokens = time.perf_counter(), None, 0
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text") and ttft is None:
                    ttft = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return ttft, tokens

    return one


def mesh_request(stub, prompt: str, max_tokens: int):
    request = inference_pb2.GenerateRequest(
        prompt=prompt, sampling={"max_tokens": max_tokens, "temperature": 0.0})

    async def one() -> tuple[float, int]:
        started, ttft, tokens = time.perf_counter(), None, 0
        async for event in stub.Generate(request, timeout=300):
            if event.WhichOneof("event") == "delta":
                if ttft is None:
                    ttft = time.perf_counter() - started
                tokens += len(event.delta.token_ids)
        return ttft, tokens

    return one


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def vllm_server(port: int, layout: CpuLayout | None) -> ManagedProcess:
    """vLLM's own server, laid out on the cores as the mesh's replica is (cpu_layout)."""
    return ManagedProcess("vllm-openai", [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(TINY_MODEL_DIR), "--served-model-name", SERVED_NAME,
        "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes",
        str(int(KV_CACHE_GIB * GIB)), "--enforce-eager", "--disable-log-stats",
        "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log",
    ], env={"VLLM_LOGGING_LEVEL": "WARNING", **(layout.engine_env() if layout else {})},
        cpus=layout.engine if layout else ())


async def cancel_to_idle(stub, load_stub, streams: int) -> float:
    """Seconds from cancelling `streams` running streams to the replica running none."""
    request = inference_pb2.GenerateRequest(prompt="cancel me", sampling={"max_tokens": 1500})
    calls = [stub.Generate(request, timeout=300) for _ in range(streams)]
    for call in calls:
        while (await call.read()).WhichOneof("event") != "delta":
            pass
    cancelled_at = time.perf_counter()
    for call in calls:
        call.cancel()
    while (await load_stub.GetLoad(generation_pb2.GetLoadRequest())).running_requests:
        await asyncio.sleep(0.002)
    return time.perf_counter() - cancelled_at


def ms(values: list[float], quantile: float) -> float:
    ordered = sorted(v for v in values if v is not None) or [float("nan")]
    return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


async def main(args) -> None:
    prompt = prompt_of(args.prompt_tokens)
    port = free_port()
    mesh = LocalMesh(MeshOptions(ports=MeshPorts.free(), engine="vllm",
                                 workdir=Path(tempfile.mkdtemp(prefix="bench-")),
                                 generation_env=(("MESHLLM_GENERATION_LOG_LEVEL", "warning"),)))
    server = vllm_server(port, mesh.cpu_layout if args.vllm_placement == "replica" else None)
    rows: dict[str, list[Round]] = {"vLLM OpenAI server": [], "mesh": []}
    cancels: dict[int, list[float]] = {n: [] for n in args.cancel_streams}
    try:
        await asyncio.gather(_start_server(server, port), mesh.start(generation_replicas=1))
        # The stream path beside vLLM's own server; moderation's cost is its own benchmark.
        await set_dev_tenant_policy(mesh, unmoderated())
        (replica,) = mesh.generation.values()
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=300)) as session, \
                grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}") as public, \
                grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as direct:
            paths = {
                "vLLM OpenAI server": openai_request(
                    session, f"http://127.0.0.1:{port}/v1/completions", prompt, args.max_tokens),
                "mesh": mesh_request(KeyedStub(inference_pb2_grpc.InferenceServiceStub(public),
                                                mesh.api_key), prompt,
                                     args.max_tokens),
            }
            for one in paths.values():  # warm up connections and the engines
                await closed_loop(one, 4, 8)
            processes = {"vLLM OpenAI server": {"API server": server.process.pid},
                         "mesh": {"router": mesh.router.process.pid,
                                  "Envoy": mesh.envoy.process.pid,
                                  "generation API": replica.process.pid}}
            for _ in range(args.rounds):
                for name, one in paths.items():
                    before = {role: cpu_seconds(pid) for role, pid in processes[name].items()}
                    rows[name].append(await closed_loop(one, args.concurrency, args.requests))
                    for role, pid in processes[name].items():
                        rows[name][-1].cpu[role] = cpu_seconds(pid) - before[role]
            # vLLM's server is not part of the cancel figures; an idle engine beside the
            # mesh's would only take CPU from it.
            await server.stop(grace=10)
            stub = KeyedStub(inference_pb2_grpc.InferenceServiceStub(public), mesh.api_key)
            load = generation_pb2_grpc.GenerationServiceStub(direct)
            for _ in range(args.cancel_repeats):
                for streams in args.cancel_streams:
                    cancels[streams].append(await cancel_to_idle(stub, load, streams))
    finally:
        await mesh.stop()
        await server.stop(grace=10)
    print_tables(rows, cancels, args)


async def _start_server(server: ManagedProcess, port: int) -> None:
    # vLLM's server prints no READY line of ours: start it, then poll its /health.
    server.ready_probe = lambda: _healthy(port)
    await server.start(timeout=600)


async def _healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/health") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def print_tables(rows: dict[str, list[Round]], cancels: dict[int, list[float]], args) -> None:
    print(f"\nmeshllm bench: real vLLM engine, tiny model, {platform.machine()}, "
          f"{os.cpu_count()} cores; {args.concurrency} concurrent streams, ~{args.prompt_tokens}"
          f"-token prompts, {args.max_tokens} out, {args.requests} requests x {args.rounds} "
          "interleaved rounds")
    header = ("path", "output tok/s (median of rounds)", "TTFT p50 / p99 ms", "errors",
              "CPU µs per token: serving processes")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    medians = {}
    for name, rounds in rows.items():
        medians[name] = statistics.median(r.tokens / r.seconds for r in rounds)
        ttfts = [t for r in rounds for t in r.ttfts]
        tokens = sum(r.tokens for r in rounds)
        cpu = ", ".join(f"{role} {1e6 * sum(r.cpu[role] for r in rounds) / tokens:.0f}"
                        for role in rounds[0].cpu)
        print(f"| {name} | {medians[name]:.0f} | {ms(ttfts, .5):.0f} / {ms(ttfts, .99):.0f} "
              f"| {sum(r.errors for r in rounds)} | {cpu} |")
    ratio = medians["mesh"] / medians["vLLM OpenAI server"]
    ttft_delta = (ms([t for r in rows["mesh"] for t in r.ttfts], .5)
                  - ms([t for r in rows["vLLM OpenAI server"] for t in r.ttfts], .5))
    print(f"\nmesh / vLLM server output tok/s: {ratio:.3f} (goal >= 0.92); "
          f"TTFT p50 difference: {ttft_delta:+.1f} ms (goal <= +10)")
    print("\n| cancelled streams | client cancel -> replica running 0, ms (median / max of "
          f"{args.cancel_repeats}) |")
    print("|---|---|")
    for streams, seconds in cancels.items():
        print(f"| {streams} | {1000 * statistics.median(seconds):.0f} / "
              f"{1000 * max(seconds):.0f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cancel-streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--vllm-placement", choices=["replica", "unpinned"], default="replica",
                        help="vLLM's own server on the cores the mesh's replica gets (replica), "
                             "or left to the kernel as vLLM ships (unpinned)")
    parser.add_argument("--cancel-repeats", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
