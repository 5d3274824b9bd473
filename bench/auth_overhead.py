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

from bench.overhead import PathResult, merge, requests, run_path
from bench.tenants import open_tenant_policy_env, set_dev_tenant_policy, unmoderated
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.inference.v1 import inference_pb2_grpc
from meshllm.api_key import KeyedStub
from services.auth.dev_tenant import DEV_TENANT
import grpc


def sim_mesh(args, open_tenant: str) -> LocalMesh:
    return LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", open_tenant=open_tenant,
        controlplane_env=open_tenant_policy_env(unmoderated()) if open_tenant else (),
        workdir=Path(tempfile.mkdtemp(prefix="bench-auth-")),
        generation_env=(
            ("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", str(args.ttft)),
            ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", str(args.itl)),
            ("MESHLLM_GENERATION_LOG_LEVEL", "warning"),
        )))


MAX_ROUNDS = 24
"""Back-to-back rounds of `streams` calls per repeat, at most: one stream at a time would take
minutes to reach --min-streams (24 rounds is 120 calls a side over five repeats)."""

POLICIES = {  # moderation off on both sides: bench.moderation_overhead measures it
    "none": unmoderated(),
    "requests": unmoderated(auth_pb2.Policy(requests_per_minute=1_000_000)),
    "requests+tokens": unmoderated(auth_pb2.Policy(requests_per_minute=1_000_000,
                                                   tokens_per_minute=1_000_000_000)),
}




async def main(args) -> None:
    on, off = sim_mesh(args, open_tenant=""), sim_mesh(args, open_tenant=DEV_TENANT)
    _, request = requests(args.max_tokens)
    # results[streams][path]: the runs of one path at one concurrency
    results: dict[int, dict[str, list[PathResult]]] = {
        streams: {"on": [], "off": []} for streams in args.concurrency}
    async with on.running(), off.running():
        # Limits that every call is checked against and none reaches.
        await set_dev_tenant_policy(on, POLICIES[args.policy])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{on.options.ports.public}") as on_ch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{off.options.ports.public}") as off_ch:
            stubs = {"on": KeyedStub(inference_pb2_grpc.InferenceServiceStub(on_ch), on.api_key),
                     "off": inference_pb2_grpc.InferenceServiceStub(off_ch)}
            for stub in stubs.values():  # warm connections and caches
                await run_path(stub, request, 4, 1)
            for streams in args.concurrency:
                rounds = min(max(args.min_streams // streams, 2), MAX_ROUNDS)
                for _ in range(args.repeats):
                    for name, stub in stubs.items():
                        results[streams][name].append(
                            await run_path(stub, request, streams, rounds))
    print_table(results, args)


def print_table(results: dict[int, dict[str, list[PathResult]]], args) -> None:
    print(f"\nmeshllm bench: auth on vs off, sim engine (ttft {args.ttft * 1000:.0f} ms, itl "
          f"{args.itl * 1000:.0f} ms, {args.max_tokens} tokens/stream), 'on' policy "
          f"{args.policy} (ext_authz, rate limit, reservation), 'off' an open tenant, "
          f"{platform.machine()}")
    print("| streams | calls a side | TTFT p50 / p99 ms off | on | on − off | tok/s off / on |")
    print("|---|---|---|---|---|---|")
    for streams, paths in results.items():
        on, off = merge(paths["on"]), merge(paths["off"])
        print(f"| {streams} | {len(on.ttfts)} | {off.ttft_ms(.5):.1f} / {off.ttft_ms(.99):.1f} "
              f"| {on.ttft_ms(.5):.1f} / {on.ttft_ms(.99):.1f} "
              f"| {on.ttft_ms(.5) - off.ttft_ms(.5):+.1f} / "
              f"{on.ttft_ms(.99) - off.ttft_ms(.99):+.1f} "
              f"| {off.tokens_per_second:.0f} / {on.tokens_per_second:.0f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                        help="streams at once; one row each (the target is read at 16)")
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
