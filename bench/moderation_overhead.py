"""What output moderation costs a stream: one sim mesh, two tenants whose policies differ only
in output moderation (off, and the default: on), side by side at 16 and 64 streams.

    make bench        (python -m bench.moderation_overhead --help for the knobs)

Both tenants' input is moderated, so the difference is the output's windows: the router
holding text back, the ModerateStream hop through Envoy, the rules (and the classifier where
they see a candidate) on every window, the verdict trail. The sim engine generates ordinary
prose with sentence ends, so windows end at sentences as they would on a real model. Rounds
alternate between the tenants so both see the same machine noise."""
import argparse
import asyncio
import platform
import tempfile
from pathlib import Path

import grpc
import psutil

from bench.overhead import cpu_seconds, merge, requests, run_path
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2_grpc
from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.api_key import KeyedStub

PROSE = ("The mesh streams tokens from a replica to the router and back to the client. Envoy "
         "balances calls over live replicas, and the control plane keeps its registry fresh. "
         "When a pool has no replica, the call waits while one starts; the client is told "
         "why. Costs are recorded per tenant, and every answer says what it cost. ")
POLICIES = {
    "off": auth_pb2.Policy(moderation=moderation_pb2.ModerationPolicy(output_disabled=True)),
    "on": auth_pb2.Policy(),
}


async def tenant_stub(mesh: LocalMesh, channel, name: str) -> KeyedStub:
    admin = auth_pb2_grpc.AuthServiceStub(channel)
    metadata = (("authorization", f"Bearer {mesh.api_key}"),)
    tenant_id = f"moderation-{name}"
    await admin.CreateTenant(auth_pb2.CreateTenantRequest(
        tenant_id=tenant_id, policy=POLICIES[name]), metadata=metadata, timeout=10)
    key = await admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=tenant_id, name="bench", role=auth_pb2.API_KEY_ROLE_CLIENT),
        metadata=metadata, timeout=10)
    return KeyedStub(inference_pb2_grpc.InferenceServiceStub(channel), key.secret)


async def main(args) -> None:
    rows = []
    for replicas in args.moderation_replicas:
        rows += await measure(args, replicas)
    print_table(rows, args)


async def measure(args, moderation_replicas: int) -> list[tuple]:
    """(moderation replicas, streams, off, on, CPU seconds per side) for each concurrency."""
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", moderation_replicas=moderation_replicas,
        workdir=Path(tempfile.mkdtemp(prefix="bench-moderation-")),
        generation_env=(
            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", str(args.ttft)),
            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", str(args.itl)),
            ("MESHLLM_GENERATION_SIM_TEXT", PROSE),
            ("MESHLLM_GENERATION_LOG_LEVEL", "warning"),
        )))
    _, request = requests(args.max_tokens)
    rows = []
    async with mesh.running():
        router = psutil.Process(mesh.router.process.pid)
        moderation = [psutil.Process(p.process.pid) for p in mesh.moderation.values()]

        def cpu_now() -> tuple[float, float]:
            return cpu_seconds(router), sum(map(cpu_seconds, moderation))

        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}") as ch:
            stubs = {name: await tenant_stub(mesh, ch, name) for name in POLICIES}
            for stub in stubs.values():  # warm connections, caches and the classifier
                await run_path(stub, request, 4, 1)
            for streams in args.concurrency:
                rounds = max(args.min_streams // streams, 2)
                runs = {name: [] for name in stubs}
                cpu = {name: [0.0, 0.0] for name in stubs}
                for _ in range(args.repeats):
                    for name, stub in stubs.items():
                        before = cpu_now()
                        runs[name].append(await run_path(stub, request, streams, rounds))
                        after = cpu_now()
                        cpu[name] = [c + b - a for c, a, b in zip(cpu[name], before, after)]
                rows.append((moderation_replicas, streams, merge(runs["off"]),
                             merge(runs["on"]), cpu))
    return rows


def print_table(rows, args) -> None:
    print(f"\nmeshllm bench: output moderation off vs on, sim engine (ttft "
          f"{args.ttft * 1000:.0f} ms, itl {args.itl * 1000:.0f} ms, {args.max_tokens} "
          f"tokens/stream, prose with sentence ends), input moderated on both sides, "
          f"{platform.machine()}")
    print("| moderation replicas | streams | calls a side | TTFT p50 / p99 ms off | on "
          "| on − off p50 | tok/s off / on | on / off | CPU µs/token router off / on "
          "| moderation off / on |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for replicas, streams, off, on, cpu in rows:
        per_token = {name: [1e6 * seconds / max(1, side.tokens) for seconds in cpu[name]]
                     for name, side in (("off", off), ("on", on))}
        print(f"| {replicas} | {streams} | {len(on.ttfts)} "
              f"| {off.ttft_ms(.5):.1f} / {off.ttft_ms(.99):.1f} "
              f"| {on.ttft_ms(.5):.1f} / {on.ttft_ms(.99):.1f} "
              f"| {on.ttft_ms(.5) - off.ttft_ms(.5):+.1f} "
              f"| {off.tokens_per_second:.0f} / {on.tokens_per_second:.0f} "
              f"| {on.tokens_per_second / off.tokens_per_second:.3f} "
              f"| {per_token['off'][0]:.0f} / {per_token['on'][0]:.0f} "
              f"| {per_token['off'][1]:.0f} / {per_token['on'][1]:.0f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ttft", type=float, default=0.02, help="sim time to first token, s")
    parser.add_argument("--itl", type=float, default=0.005, help="sim inter-token latency, s")
    parser.add_argument("--min-streams", type=int, default=128,
                        help="streams per side per repeat, at least")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--moderation-replicas", type=int, nargs="+", default=[1],
                        help="a mesh and a row each (one process judges every window of "
                             "every stream: at 64 streams its queue is the TTFT cost)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
