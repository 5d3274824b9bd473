"""What asking for a key costs a stream: the same sim mesh with ext_authz, the per-tenant rate
limit and the router's reservation on, and with them off (an open tenant), side by side.

    make bench        (python -m bench.auth_overhead --help for the knobs)

Two meshes run at once, each with its own Envoy, router, auth and sim replica; rounds
alternate between them so both see the same machine noise. "On" is a tenant whose policy has
a requests-per-minute and a tokens-per-minute limit far above the load, so every call is
checked (ext_authz), counted (rate limit service), reserved and settled; "off" is Envoy
asserting one tenant with no check, no count and no reservation (settled all the same)."""
import argparse
import asyncio
import platform
import tempfile
from pathlib import Path

from bench.overhead import PathResult, requests, run_path
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2_grpc
from meshllm.api_key import KeyedStub, keyed_channel
from services.auth.dev_tenant import DEV_TENANT
import grpc


def sim_mesh(args, open_tenant: str) -> LocalMesh:
    return LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", open_tenant=open_tenant,
        workdir=Path(tempfile.mkdtemp(prefix="bench-auth-")),
        generation_env=(
            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", str(args.ttft)),
            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", str(args.itl)),
            ("MESHLLM_GENERATION_LOG_LEVEL", "warning"),
        )))


POLICIES = {
    "none": auth_pb2.Policy(),
    "requests": auth_pb2.Policy(requests_per_minute=1_000_000),
    "requests+tokens": auth_pb2.Policy(requests_per_minute=1_000_000,
                                       tokens_per_minute=1_000_000_000),
}


async def limit_the_dev_tenant(mesh: LocalMesh, policy: str) -> None:
    """Limits that every call is checked against and none reaches."""
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).UpdatePolicy(auth_pb2.UpdatePolicyRequest(
            tenant_id=DEV_TENANT, policy=POLICIES[policy]), timeout=10)


async def main(args) -> None:
    on, off = sim_mesh(args, open_tenant=""), sim_mesh(args, open_tenant=DEV_TENANT)
    _, request = requests(args.max_tokens)
    results: dict[str, list[PathResult]] = {"on": [], "off": []}
    async with on.running(), off.running():
        await limit_the_dev_tenant(on, args.policy)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{on.options.ports.public}") as on_ch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{off.options.ports.public}") as off_ch:
            stubs = {"on": KeyedStub(inference_pb2_grpc.InferenceServiceStub(on_ch), on.api_key),
                     "off": inference_pb2_grpc.InferenceServiceStub(off_ch)}
            for stub in stubs.values():  # warm connections and caches
                await run_path(stub, request, 4, 1)
            rounds = max(args.min_streams // args.concurrency, 2)
            for _ in range(args.repeats):
                for name, stub in stubs.items():
                    results[name].append(await run_path(stub, request, args.concurrency, rounds))
    print_table(results, args)


def print_table(results: dict[str, list[PathResult]], args) -> None:
    merged = {name: PathResult([t for r in runs for t in r.ttfts], sum(r.tokens for r in runs),
                               sum(r.seconds for r in runs))
              for name, runs in results.items()}
    on, off = merged["on"], merged["off"]
    print(f"\nmeshllm bench: auth on vs off, sim engine (ttft {args.ttft * 1000:.0f} ms, itl "
          f"{args.itl * 1000:.0f} ms, {args.max_tokens} tokens/stream), {args.concurrency} "
          f"streams, {len(on.ttfts)} calls each, {platform.machine()}")
    print("| path | TTFT p50 / p99 ms | tok/s |")
    print("|---|---|---|")
    for name, result in (("ext_authz + rate limit + reservation off (open tenant)", off),
                         ("ext_authz + rate limit + reservation on", on)):
        print(f"| {name} | {result.ttft_ms(.5):.1f} / {result.ttft_ms(.99):.1f} "
              f"| {result.tokens_per_second:.0f} |")
    print(f"| on − off | {on.ttft_ms(.5) - off.ttft_ms(.5):+.1f} / "
          f"{on.ttft_ms(.99) - off.ttft_ms(.99):+.1f} | |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ttft", type=float, default=0.02, help="sim time to first token, s")
    parser.add_argument("--itl", type=float, default=0.005, help="sim inter-token latency, s")
    parser.add_argument("--min-streams", type=int, default=96,
                        help="streams per path per repeat, at least")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="requests+tokens",
                        help="the 'on' tenant's limits: none (key check only), requests (plus "
                             "the rate limit service), requests+tokens (plus a reservation)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
