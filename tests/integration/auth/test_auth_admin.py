"""The admin API (meshllm.auth.v1.AuthService) of a real auth replica: tenants, keys,
policies, usage; hostile input on every RPC; and no key secret anywhere but its create
response."""

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.dev_tenant import ensure_dev_tenant
from services.auth.keys import hash_secret
from services.auth.policy import default_policy, period_of
from services.auth.store import open_store
from tests.integration.auth.auth_calls import (
    PRICES,
    REPO,
    Code,
    Policy,
    add_key,
    add_tenant,
    bearer,
    is_allowed,
    random_part,
    refused,
    reserve,
    settle,
    wait_until,
)
from tests.integration.auth.auth_server import (
    ADMIN_PATH,
    AuthReplica,
    running_auth,
)
from tests.status_details import error_details

# The admin API: meshllm.auth.v1.AuthService.

async def test_tenants_are_created_listed_and_read_back(auth):
    policy = Policy(allowed_models=["tiny"], requests_per_minute=60, prices=PRICES)
    zeta = (await auth.admin.CreateTenant(auth_pb2.CreateTenantRequest(
        tenant_id="zeta", display_name="Zeta Ltd", policy=policy))).tenant
    assert (zeta.id, zeta.display_name, zeta.policy, zeta.policy_version) == (
        "zeta", "Zeta Ltd", policy, 1)
    assert abs(zeta.create_time.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    acme = await add_tenant(auth, "acme")  # no name, no policy: the defaults
    assert (acme.display_name, acme.policy) == ("acme", default_policy())
    listed = await auth.admin.ListTenants(auth_pb2.ListTenantsRequest())
    # "dev" is the harness's own: the tenant of the admin key these calls carry.
    assert [t for t in listed.tenants if t.id != "dev"] == [acme, zeta]
    got = await auth.admin.GetTenant(auth_pb2.GetTenantRequest(tenant_id="zeta"))
    assert got.tenant == zeta


async def test_a_keys_secret_is_in_its_create_response_and_in_no_listing(auth):
    await add_tenant(auth)
    created = await auth.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(tenant_id="acme",
                                                                         name="ci"))
    admin = await add_key(auth, role=auth_pb2.API_KEY_ROLE_ADMIN)
    key = created.key
    assert (key.tenant_id, key.name, key.role) == ("acme", "ci", auth_pb2.API_KEY_ROLE_CLIENT)
    assert key.prefix == f"mk_live_{key.id}" and created.secret.startswith(key.prefix + "_")
    assert not key.HasField("revoke_time")
    listed = await auth.admin.ListApiKeys(auth_pb2.ListApiKeysRequest(tenant_id="acme"))
    assert list(listed.keys) == [key, admin.key]
    for secret in (created.secret, admin.secret):
        for part in (secret, random_part(secret)):
            assert part.encode() not in listed.SerializeToString()


async def test_a_revoked_key_keeps_its_first_revoke_time_and_stays_listed(auth):
    await add_tenant(auth)
    key = (await add_key(auth)).key
    revoked = (await auth.admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key.id))).key
    assert revoked.HasField("revoke_time") and revoked.id == key.id
    again = (await auth.admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key.id))).key
    assert again.revoke_time == revoked.revoke_time
    listed = await auth.admin.ListApiKeys(auth_pb2.ListApiKeysRequest(tenant_id="acme"))
    assert list(listed.keys) == [revoked]


async def test_updating_a_policy_replaces_it_and_bumps_its_version(auth):
    await add_tenant(auth)
    got = await auth.admin.GetPolicy(auth_pb2.GetPolicyRequest(tenant_id="acme"))
    assert (got.policy, got.policy_version) == (default_policy(), 1)
    for version, rpm in ((2, 10), (3, 20)):
        policy = Policy(requests_per_minute=rpm, monthly_budget_micro_usd=0)
        updated = await auth.admin.UpdatePolicy(auth_pb2.UpdatePolicyRequest(tenant_id="acme",
                                                                             policy=policy))
        assert (updated.policy, updated.policy_version) == (policy, version)
        got = await auth.admin.GetPolicy(auth_pb2.GetPolicyRequest(tenant_id="acme"))
        assert (got.policy, got.policy_version) == (policy, version)
    tenant = (await auth.admin.GetTenant(auth_pb2.GetTenantRequest(tenant_id="acme"))).tenant
    assert tenant.policy_version == 3 and tenant.policy.HasField("monthly_budget_micro_usd")


async def test_an_update_based_on_a_stale_read_is_aborted_and_changes_nothing(auth):
    await add_tenant(auth)
    read = await auth.admin.GetPolicy(auth_pb2.GetPolicyRequest(tenant_id="acme"))
    mine, theirs = Policy(requests_per_minute=10), Policy(requests_per_minute=99)
    await auth.admin.UpdatePolicy(auth_pb2.UpdatePolicyRequest(
        tenant_id="acme", policy=theirs, expected_policy_version=read.policy_version))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.admin.UpdatePolicy(auth_pb2.UpdatePolicyRequest(
            tenant_id="acme", policy=mine, expected_policy_version=read.policy_version))
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "version 2, not 1" in refused.value.details()
    got = await auth.admin.GetPolicy(auth_pb2.GetPolicyRequest(tenant_id="acme"))
    assert (got.policy, got.policy_version) == (theirs, 2)


async def test_usage_sums_settled_calls_by_model_by_label_and_for_one_model(auth):
    await add_tenant(auth, "acme", Policy(prices=PRICES))
    calls = [("r1", "tiny", {"team": "search"}, 100, 10), ("r2", "tiny", {"team": "ads"}, 50, 5),
             ("r3", "small", {}, 7, 3), ("r4", "tiny", {"team": "search"}, 1, 1)]
    for request_id, model, labels, prompt, completion in calls:
        await auth.usage.Settle(settle(request_id=request_id, model=model, labels=labels,
                                       prompt=prompt, completion=completion))

    async def usage(**fields):
        answer = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme", **fields))
        return answer, [(r.model, r.label_value, r.requests, r.prompt_tokens,
                         r.completion_tokens, r.cost_micro_usd) for r in answer.rows]
    by_model, rows = await usage()
    assert rows == [("small", "", 1, 7, 3, 0), ("tiny", "", 3, 151, 16, 167)]
    assert (by_model.total.requests, by_model.total.cost_micro_usd) == (4, 167)
    assert by_model.period == period_of(datetime.now(UTC))
    assert not by_model.HasField("budget_micro_usd")
    _, rows = await usage(group_by_label="team", period=by_model.period)
    assert rows == [("", "", 1, 7, 3, 0), ("", "ads", 1, 50, 5, 55),
                    ("", "search", 2, 101, 11, 112)]
    _, rows = await usage(model="tiny", group_by_label="team")
    assert rows == [("", "ads", 1, 50, 5, 55), ("", "search", 2, 101, 11, 112)]
    _, rows = await usage(period="2020-01")
    assert rows == []


# Hostile input: every admin RPC answers bad input with a clear status, and keeps serving.

@pytest.fixture(scope="module")
async def target(tmp_path_factory):
    """One replica for the hostile-input cases (they change nothing), with tenant acme."""
    async with running_auth(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'auth.db'}") \
            as replica:
        await add_tenant(replica)
        yield replica


R = auth_pb2
BAD_TENANT_IDS = ["", "a" * 64, "x" * 10_000, "acme\n", "ac\x00me", "ac\u202eme", "ACME", "ac me"]
HOSTILE = [
    *(("CreateTenant", R.CreateTenantRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("CreateTenant", R.CreateTenantRequest(tenant_id="acme"), Code.ALREADY_EXISTS,
     "tenant 'acme' already exists"),
    ("CreateTenant", R.CreateTenantRequest(tenant_id="new", display_name="a\x07b"),
     Code.INVALID_ARGUMENT, "display_name"),
    ("CreateTenant", R.CreateTenantRequest(tenant_id="new", display_name="n" * 129),
     Code.INVALID_ARGUMENT, "display_name"),
    ("CreateTenant", R.CreateTenantRequest(tenant_id="new", policy=Policy(requests_per_minute=-1)),
     Code.INVALID_ARGUMENT, "policy.requests_per_minute"),
    *(("GetTenant", R.GetTenantRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("GetTenant", R.GetTenantRequest(tenant_id="ghost"), Code.NOT_FOUND, "tenant 'ghost'"),
    *(("CreateApiKey", R.CreateApiKeyRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("CreateApiKey", R.CreateApiKeyRequest(tenant_id="ghost"), Code.NOT_FOUND, "tenant 'ghost'"),
    ("CreateApiKey", R.CreateApiKeyRequest(tenant_id="acme", role=7), Code.INVALID_ARGUMENT,
     "role 7 is unknown"),
    ("CreateApiKey", R.CreateApiKeyRequest(tenant_id="acme", role=-1), Code.INVALID_ARGUMENT,
     "role -1 is unknown"),
    ("CreateApiKey", R.CreateApiKeyRequest(tenant_id="acme", name="ci\nbot"),
     Code.INVALID_ARGUMENT, "name"),
    ("CreateApiKey", R.CreateApiKeyRequest(tenant_id="acme", name="n" * 129),
     Code.INVALID_ARGUMENT, "name"),
    *(("ListApiKeys", R.ListApiKeysRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("ListApiKeys", R.ListApiKeysRequest(tenant_id="ghost"), Code.NOT_FOUND, "tenant 'ghost'"),
    *(("RevokeApiKey", R.RevokeApiKeyRequest(key_id=k), Code.INVALID_ARGUMENT, "key_id")
      for k in ["", "k" * 65, "x" * 10_000, "abcdefghijk\x00", "abcdefghijkl\n",
                "mk_live_abcdefghijkl", "ABCDEFGHIJKL"]),
    ("RevokeApiKey", R.RevokeApiKeyRequest(key_id="abcdefghijkl"), Code.NOT_FOUND,
     "API key 'abcdefghijkl' does not exist"),
    *(("GetPolicy", R.GetPolicyRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("GetPolicy", R.GetPolicyRequest(tenant_id="ghost"), Code.NOT_FOUND, "tenant 'ghost'"),
    *(("UpdatePolicy", R.UpdatePolicyRequest(tenant_id=t, policy=Policy()),
       Code.INVALID_ARGUMENT, "tenant_id") for t in BAD_TENANT_IDS),
    ("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="ghost", policy=Policy()), Code.NOT_FOUND,
     "tenant 'ghost'"),
    ("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="acme", policy=Policy(),
                                           expected_policy_version=-1), Code.INVALID_ARGUMENT,
     "expected_policy_version"),
    ("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="acme"), Code.INVALID_ARGUMENT,
     "policy is required"),
    *(("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="acme", policy=Policy(**{field: -1})),
       Code.INVALID_ARGUMENT, f"policy.{field}")
      for field in ("max_tokens_per_request", "max_concurrent_streams", "requests_per_minute",
                    "tokens_per_minute", "monthly_budget_micro_usd")),
    ("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="acme", policy=Policy(
        moderation_strictness=42)), Code.INVALID_ARGUMENT, "policy.moderation_strictness"),
    ("UpdatePolicy", R.UpdatePolicyRequest(tenant_id="acme", policy=Policy(
        prices={"tiny": R.ModelPrice(output_per_1k_micro_usd=-5)})), Code.INVALID_ARGUMENT,
     "price of 'tiny'"),
    *(("GetUsage", R.GetUsageRequest(tenant_id=t), Code.INVALID_ARGUMENT, "tenant_id")
      for t in BAD_TENANT_IDS),
    ("GetUsage", R.GetUsageRequest(tenant_id="ghost"), Code.NOT_FOUND, "tenant 'ghost'"),
    *(("GetUsage", R.GetUsageRequest(tenant_id="acme", period=p), Code.INVALID_ARGUMENT,
       "period must be a month as YYYY-MM")
      for p in ["2026-13", "abc", "2026-1", "2026-00", "9999-12", "2026-05\n", "p" * 10_000]),
    ("GetUsage", R.GetUsageRequest(tenant_id="acme", model="ti\x00ny"), Code.INVALID_ARGUMENT,
     "model"),
    ("GetUsage", R.GetUsageRequest(tenant_id="acme", group_by_label="l" * 129),
     Code.INVALID_ARGUMENT, "group_by_label"),
]


@pytest.mark.parametrize("method, request_, code, text", HOSTILE,
                         ids=[f"{m}-{n}" for n, (m, *_) in enumerate(HOSTILE)])
async def test_bad_admin_input_gets_a_clear_status_and_the_service_keeps_serving(
        target, method, request_, code, text):
    error = await refused(getattr(target.admin, method)(request_))
    assert error.code() == code, (error.code(), error.details())
    assert text in error.details()
    assert error_details(error)["ErrorInfo"].reason
    assert len(error.details()) < 1_000  # an overlong input is not echoed back whole
    listed = await target.admin.ListTenants(auth_pb2.ListTenantsRequest())
    assert [tenant.id for tenant in listed.tenants if tenant.id != "dev"] == ["acme"]


SERVICES = {"meshllm.auth.v1.AuthService": auth_pb2_grpc.AuthServiceServicer,
            "meshllm.auth.v1.UsageService": auth_pb2_grpc.UsageServiceServicer}
METHODS = [f"/{service}/{name}" for service, servicer in SERVICES.items()
           for name in dir(servicer) if name[0].isupper()] + [
    "/envoy.service.auth.v3.Authorization/Check",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"]


@pytest.mark.parametrize("method", METHODS)
async def test_garbage_bytes_as_a_request_are_invalid_argument_and_the_service_keeps_serving(
        target, method):
    # The second is field 1 as two bytes of invalid UTF-8 (ListTenants has no field 1).
    for garbage in (b"\xff\xff\xff\x01not a protobuf", b"\x0a\x02\xff\xfe")[
            :1 if method.endswith("/ListTenants") else 2]:
        error = await refused(target.raw(method)(garbage, timeout=5))
        assert error.code() == Code.INVALID_ARGUMENT, (error.code(), error.details())
        assert "not a valid protobuf message" in error.details()
    assert (await target.admin.GetTenant(auth_pb2.GetTenantRequest(tenant_id="acme"))).tenant


# Secrets: only ever in the CreateApiKey response.

async def test_no_secret_reaches_the_database_its_wal_the_logs_or_the_spans(tmp_path):
    database, log_path = tmp_path / "auth.db", tmp_path / "auth.log"
    env = {**os.environ, "MESHLLM_DATABASE_URL": f"sqlite:///{database}",
           "MESHLLM_REDIS_URL": "", "MESHLLM_AUTH_CONTROLPLANE_ADDRESS": "",
           "MESHLLM_AUTH_PORT": "0", "MESHLLM_AUTH_METRICS_PORT": "-1",
           "MESHLLM_AUTH_LOG_LEVEL": "debug", "MESHLLM_AUTH_OTEL_CONSOLE": "true",
           "MESHLLM_AUTH_DRAIN_GRACE_SECONDS": "1"}
    store = await open_store(f"sqlite:///{database}")
    try:  # the operator's first admin key, as make up makes it
        admin_key = await ensure_dev_tenant(store, tmp_path / "admin-key")
    finally:
        await store.close()
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.auth", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        assert line.startswith(b"READY port="), log_path.read_text()[-2000:]
        port = int(line.split(b"=")[1])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            secrets = [admin_key, *await use_keys_every_way(channel, port, admin_key)]
        wal = Path(f"{database}-wal").read_bytes()  # read before the last close checkpoints it
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await process.wait()
    logs = log_path.read_text()
    assert '"event": "serving"' in logs and '"service": "auth"' in logs  # logs were written
    assert '"name": "envoy.service.auth.v3.Authorization/Check"' in logs  # and spans exported
    searched = {"database": database.read_bytes(), "wal": wal, "logs": logs.encode()}
    # The store does hold each issued key, as its hash: the right files were searched.
    assert all(hash_secret(secret) in searched["database"] + wal for secret in secrets[:2])
    leaks = {where for secret in secrets
             for part in (secret, random_part(secret))
             for where, content in searched.items() if part.encode() in content}
    assert not leaks, f"a key's secret is in the {', '.join(sorted(leaks))}"


async def use_keys_every_way(channel, port: int, admin_key: str) -> list[str]:
    """Creates keys and uses them for everything the service does with a key; their secrets."""
    auth = AuthReplica.on(channel, port, admin_key)
    await add_tenant(auth, "acme", Policy(requests_per_minute=5, prices=PRICES,
                                          monthly_budget_micro_usd=1_000))
    client, admin = await add_key(auth), await add_key(auth, role=auth_pb2.API_KEY_ROLE_ADMIN)
    wrong = client.secret[:-1] + ("A" if client.secret[-1] != "A" else "B")
    assert is_allowed(await auth.check(bearer(client.secret)))
    assert is_allowed(await auth.check(bearer(admin.secret), path=ADMIN_PATH))
    assert not is_allowed(await auth.check(bearer(client.secret), path=ADMIN_PATH))
    assert not is_allowed(await auth.check(bearer(wrong)))
    assert not is_allowed(await auth.check(client.secret))  # without "Bearer "
    await auth.should_rate_limit("acme")
    await auth.usage.Reserve(reserve())
    await auth.usage.Settle(settle())
    await auth.admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=client.key.id))
    await wait_until(lambda: denied_now(auth, client.secret), within_seconds=5)
    return [client.secret, admin.secret, wrong]


async def denied_now(auth, secret: str) -> bool:
    return not is_allowed(await auth.check(bearer(secret)))


