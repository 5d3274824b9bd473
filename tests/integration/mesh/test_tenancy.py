"""Tenancy end to end through Envoy's public listener: a LocalMesh (sim engine, two auth
replicas), once on SQLite and once on PostgreSQL. Who a call belongs to, what its policy lets
it do, what the ledger records of it, and what a client sees while auth is down. Tenants, keys
and policies are made with the admin API, as an operator makes them.

Rate limits, budgets and Redis are in test_tenancy_limits.py."""
import asyncio
import base64

import grpc
import pytest
from google.rpc import status_pb2

from deploy.local.envoy_admin import cluster_endpoints
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.api_key import KeyedStub, bearer
from tests.integration.auth.auth_server import AuthReplica
from tests.integration.mesh.tenant_client import (GENERATE_PATH, TenantClient,
                                                  auth_rpcs_by_replica, raw_call, reason,
                                                  refusal)
from tests.postgres_server import running_postgres
from tests.status_details import unpacked

Code = grpc.StatusCode
Policy = auth_pb2.Policy
MODEL = "sim-tenancy"
CONTEXT = 2048  # the sim replica's context: MESHLLM_GENERATION_MAX_MODEL_LEN's default
# Whole micro-dollars per token, so a call's cost follows exactly from its tokens:
# 1 per prompt token, 2 per generated token.
PRICES = {MODEL: auth_pb2.ModelPrice(input_per_1k_micro_usd=1_000,
                                     output_per_1k_micro_usd=2_000)}


@pytest.fixture(scope="module")
def postgres():
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def mesh(request, tmp_path_factory):
    database_url = request.getfixturevalue("postgres").url() \
        if request.param == "postgres" else ""
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", model=MODEL, auth_replicas=2,
        database_url=database_url, workdir=tmp_path_factory.mktemp("mesh"),
        # The first token comes 0.5 s after the started event: a client that cancels on the
        # started event is gone before any token.
        generation_env=(("MESHLLM_GENERATION_SIM_TIME_TO_FIRST_TOKEN_SECONDS", "0.5"),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.005"))))
    async with mesh.running(generation_replicas=1):
        yield mesh


def forged_identity(tenant_id: str) -> tuple[tuple[str, str | bytes], ...]:
    """Every header ext_authz sets, as a client would forge them: another tenant, and a policy
    that allows everything."""
    return (("x-meshllm-tenant", tenant_id), ("x-meshllm-policy-bin", Policy().SerializeToString()),
            ("x-meshllm-policy-version", "99"), ("x-meshllm-key-id", "forged"))


async def test_a_call_without_a_key_is_unauthenticated_with_api_key_missing(client):
    for call in (client.generate(None), client.list_models(None)):
        error = await refusal(call)
        assert error.code() == Code.UNAUTHENTICATED, error
        assert reason(error) == "API_KEY_MISSING"
        assert "authorization: Bearer" in error.details()


# Sent over raw HTTP/2: grpc's own client refuses to send a non-ASCII header value.
HOSTILE_AUTHORIZATION = {
    "basic": (b"Basic x", "API_KEY_MALFORMED"),
    "bearer-and-10-kb": (b"Bearer " + b"k" * 10_240, "API_KEY_MALFORMED"),
    "bearer-alone": (b"Bearer ", "API_KEY_INVALID"),
    "made-up-key": (b"Bearer mk_live_abcdefghijkl_" + b"x" * 43, "API_KEY_INVALID"),
    "non-ascii": ("Bearer ключ-🔑".encode(), "API_KEY_INVALID"),
    "not-utf-8": (b"Bearer \xff\xfe\x80", "API_KEY_INVALID"),
}


@pytest.mark.parametrize("authorization, expected_reason", HOSTILE_AUTHORIZATION.values(),
                         ids=HOSTILE_AUTHORIZATION.keys())
async def test_a_malformed_oversized_or_unknown_key_is_unauthenticated_and_the_mesh_serves_on(
        mesh, client, authorization, expected_reason):
    request = inference_pb2.GenerateRequest(prompt="hi", sampling={"max_tokens": 2})
    answer = await raw_call(mesh.options.ports.public, GENERATE_PATH,
                            [(b"authorization", authorization)], request.SerializeToString())
    assert answer.get(b"grpc-status") == b"16", answer  # UNAUTHENTICATED
    assert answer.get(b"grpc-message"), "a refusal without a message"
    packed = answer[b"grpc-status-details-bin"]
    details = unpacked(status_pb2.Status.FromString(base64.b64decode(packed + b"==")))
    assert details["ErrorInfo"].reason == expected_reason
    await client.generate(mesh.api_key)
    assert all(replica.process.returncode is None for replica in mesh.auth.values())


async def test_a_revoked_key_is_unauthenticated_within_1s_on_both_auth_replicas(mesh, client):
    """Both replicas hold the key in their caches when it is revoked. Each is then asked
    directly (its own Check, as Envoy asks it) until it refuses the key: that times every
    replica, whichever Envoy would have picked. Then, at the second, a burst through Envoy:
    all refused, and Envoy's per-host counters show that both replicas answered some of it."""
    _, key, key_id = await client.new_tenant(Policy())
    ports = [process.port for process in mesh.auth.values()]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    replicas = [AuthReplica.on(channel, port, mesh.api_key)
                for channel, port in zip(channels, ports)]
    loop = asyncio.get_running_loop()
    try:
        await client.generate(key)
        # Past both replicas' next revision poll (every 0.25 s), which empties their caches for
        # the key's creation: the key each caches now stays cached until the revocation.
        await asyncio.sleep(0.6)
        for replica in replicas:
            assert (await replica.check(f"Bearer {key}")).status.code == Code.OK.value[0]
        revoked_at = loop.time()  # timed from the request: the revocation's own RPC counts
        await client.admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key_id))

        async def seconds_until_refused(replica: AuthReplica) -> float:
            while (await replica.check(f"Bearer {key}")).status.code == Code.OK.value[0]:
                assert loop.time() - revoked_at < 1.0, "a revoked key still works after 1 s"
                await asyncio.sleep(0.01)
            return loop.time() - revoked_at

        assert max(await asyncio.gather(*map(seconds_until_refused, replicas))) < 1.0
    finally:
        for channel in channels:
            await channel.close()
    await asyncio.sleep(max(0.0, revoked_at + 1.0 - loop.time()))
    before = await auth_rpcs_by_replica(mesh)
    errors = await asyncio.gather(*(refusal(client.list_models(key)) for _ in range(20)))
    assert {(error.code(), reason(error)) for error in errors} == {
        (Code.UNAUTHENTICATED, "API_KEY_INVALID")}
    after = await auth_rpcs_by_replica(mesh)
    assert all(after[name] > before[name] for name in after), (before, after)


async def test_a_model_outside_the_policy_is_permission_denied(client):
    _, key, _ = await client.new_tenant(Policy(allowed_models=["another-model"]))
    error = await refusal(client.generate(key))
    assert error.code() == Code.PERMISSION_DENIED, error
    assert reason(error) == "MODEL_NOT_ALLOWED"
    assert f"may not use model {MODEL!r}" in error.details()


async def test_max_tokens_over_the_policy_is_permission_denied(client):
    _, key, _ = await client.new_tenant(Policy(max_tokens_per_request=8))
    error = await refusal(client.generate(key, max_tokens=9))
    assert error.code() == Code.PERMISSION_DENIED, error
    assert reason(error) == "MAX_TOKENS_OVER_POLICY"
    assert (await client.generate(key, max_tokens=8)).usage.completion_tokens == 8


async def test_client_forged_tenant_and_policy_headers_are_ignored(client):
    payer, payer_key, _ = await client.new_tenant(Policy())
    restricted, restricted_key, _ = await client.new_tenant(
        Policy(allowed_models=["another-model"]))
    # The key's tenant pays, not the tenant the headers name.
    await client.generate(payer_key, metadata=forged_identity(restricted))
    assert (await client.settled_usage(payer, 1)).total.requests == 1
    # A permissive policy sent along lifts none of the key's restrictions.
    error = await refusal(client.generate(restricted_key, metadata=forged_identity(payer)))
    assert error.code() == Code.PERMISSION_DENIED and reason(error) == "MODEL_NOT_ALLOWED"
    assert f"tenant {restricted!r}" in error.details()
    assert (await client.usage(restricted)).total.requests == 0
    assert (await client.usage(payer)).total.requests == 1


async def test_an_admin_call_with_a_client_key_is_permission_denied(client):
    tenant, key, _ = await client.new_tenant(Policy())
    admin_as_client = KeyedStub(auth_pb2_grpc.AuthServiceStub(client.channel), key)
    for call in (admin_as_client.ListTenants(auth_pb2.ListTenantsRequest()),
                 admin_as_client.GetUsage(auth_pb2.GetUsageRequest(tenant_id=tenant))):
        error = await refusal(call)
        assert error.code() == Code.PERMISSION_DENIED, error
        assert reason(error) == "ADMIN_ROLE_REQUIRED"


async def killed_mid_stream(mesh, client: TenantClient, key: str, labels) -> tuple[
        int, grpc.aio.AioRpcError]:
    """A long Generate whose replica is killed once the first tokens reached the client:
    (tokens the client received, the error the stream ended with)."""
    call = client.inference.Generate(inference_pb2.GenerateRequest(
        prompt="its replica dies", sampling={"max_tokens": 1_000}, labels=labels),
        metadata=bearer(key), timeout=30)
    replica, received = "", 0
    try:
        async for event in call:
            replica = replica or event.started.replica
            received += len(event.delta.token_ids)
            if received and mesh.generation[replica].process.returncode is None:
                await mesh.generation[replica].kill()
    except grpc.aio.AioRpcError as error:
        return received, error
    raise AssertionError("the stream went on without its replica")


async def test_the_ledger_equals_what_clients_saw_of_finished_cancelled_and_failed_calls(
        mesh, client):
    # A second replica: the mesh serves on when the one streaming the last call is killed.
    await mesh.wait_until_routed([await mesh.add_generation_replica()])
    tenant, key, _ = await client.new_tenant(
        Policy(prices=PRICES, monthly_budget_micro_usd=10**9))  # so every call reserves too
    prompts = ["one", "two words", "now three words", "a prompt of five words"]
    finished = await asyncio.gather(*(
        client.generate(key, prompt, max_tokens=3 + n, labels={"kind": "finished"})
        for n, prompt in enumerate(prompts)))
    cancels = [("delta", "cancelled mid stream")] * 3 + [
        ("started", "cancelled before its first token")] * 2
    received = await asyncio.gather(*(
        client.cancel_after(key, event, prompt, 1_000, labels={"kind": "cancelled"})
        for event, prompt in cancels))
    # Refused by the replica, after metering began: the prompt and max_tokens together do
    # not fit the context (the router checks max_tokens alone).
    too_long = " ".join(["word"] * (CONTEXT - 8))
    refused = await asyncio.gather(*(refusal(client.generate(
        key, too_long, max_tokens=16, labels={"kind": "refused-by-replica"})) for _ in range(2)))
    assert {(error.code(), reason(error)) for error in refused} == {
        (Code.INVALID_ARGUMENT, "CONTEXT_EXCEEDED")}
    # Refused by the router before metering: no call reached generation, none is recorded.
    early = await refusal(client.generate(key, max_tokens=CONTEXT,
                                          labels={"kind": "refused-by-router"}))
    assert early.code() == Code.INVALID_ARGUMENT
    received_before_death, broken = await killed_mid_stream(mesh, client, key,
                                                             {"kind": "replica-died"})
    assert broken.code() == Code.UNAVAILABLE and reason(broken) == "REPLICA_FAILED_MIDSTREAM"

    usage = await client.settled_usage(tenant, len(finished) + len(cancels) + len(refused) + 1,
                                       group_by_label="kind")
    rows = {row.label_value: row for row in usage.rows}
    assert set(rows) == {"finished", "cancelled", "refused-by-replica", "replica-died"}
    assert (rows["finished"].requests, rows["finished"].prompt_tokens,
            rows["finished"].completion_tokens, rows["finished"].cost_micro_usd) == (
        len(finished), sum(event.usage.prompt_tokens for event in finished),
        sum(event.usage.completion_tokens for event in finished),
        sum(event.cost_micro_usd for event in finished))
    for event in finished:
        assert event.cost_micro_usd == (event.usage.prompt_tokens
                                        + 2 * event.usage.completion_tokens)
    # Calls without a finished event are charged what they used: the prompt (the sim counts
    # its whitespace-separated words as tokens) and at least the tokens that reached the
    # client; the router may have sent more before the end reached it.
    cancelled, died = rows["cancelled"], rows["replica-died"]
    assert cancelled.requests == len(cancels)
    assert cancelled.prompt_tokens == sum(len(prompt.split()) for _, prompt in cancels)
    assert sum(received) <= cancelled.completion_tokens < len(cancels) * 1_000
    assert (died.requests, died.prompt_tokens) == (1, 3)
    assert 0 < received_before_death <= died.completion_tokens < 1_000
    for row in (cancelled, died):
        assert row.cost_micro_usd == row.prompt_tokens + 2 * row.completion_tokens
    assert (rows["refused-by-replica"].requests, rows["refused-by-replica"].prompt_tokens,
            rows["refused-by-replica"].completion_tokens,
            rows["refused-by-replica"].cost_micro_usd) == (len(refused), 0, 0, 0)
    assert usage.total.cost_micro_usd == sum(row.cost_micro_usd for row in rows.values())
    # Nothing is held any more: calls without a finished event released their reservations.
    assert usage.reserved_micro_usd == usage.total.cost_micro_usd


# Last: it leaves the mesh with a third auth replica and two dead ones.
async def test_with_auth_killed_calls_fail_closed_and_succeed_once_it_is_back(mesh, client):
    tenant, key, _ = await client.new_tenant(Policy(prices=PRICES,
                                                    monthly_budget_micro_usd=10**9))
    others = [process for process in (mesh.controlplane, mesh.envoy, mesh.router,
                                      *mesh.generation.values())
              if process.process.returncode is None]
    pids = [process.process.pid for process in others]
    for replica in list(mesh.auth.values()):
        await replica.kill()
    for call in (client.generate(key), client.list_models(key),
                 client.list_models(mesh.api_key), client.generate(key)):
        error = await refusal(call)
        assert error.code() == Code.UNAVAILABLE, error
        assert "auth service did not answer" in error.details()

    replica = await mesh.add_auth_replica()
    await mesh.wait_until_routed([replica])
    # The dead replicas stay in Envoy's auth cluster until their leases run out (10 s). While
    # they are two of its three hosts, the cluster is below its panic threshold (50 %) and
    # Envoy balances over all three, health aside: about two checks in three went to a dead
    # replica and failed (UNAVAILABLE) until then. So "back" is once they are gone.
    address, deadline = f"127.0.0.1:{replica.port}", asyncio.get_running_loop().time() + 30
    while await cluster_endpoints(mesh.options.ports.admin, "auth") != {address}:
        assert asyncio.get_running_loop().time() < deadline, "dead auth replicas stay routed"
        await asyncio.sleep(0.2)
    for _ in range(5):
        await client.list_models(key)
        assert (await client.generate(key)).cost_micro_usd > 0
    # Reserved and settled by the new replica: the ledger has every call that got through.
    assert (await client.settled_usage(tenant, 5)).total.requests == 5
    assert [process.process.pid for process in others] == pids
    assert all(process.process.returncode is None for process in others)
