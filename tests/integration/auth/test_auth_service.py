"""The auth service over real gRPC, as Envoy (ext_authz, rate limit), the router (Reserve,
Settle) and an admin call it: real replicas in this process (auth_server.py) on a SQLite file
in tmp_path, or on the session's PostgreSQL for a store outage; one real `python -m
services.auth` to search its logs and spans for secrets."""

import asyncio
import base64
import os
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from meshllm.api.auth.v1 import auth_pb2
from meshllm.tenancy import cost_micro_usd
from services.auth.keys import new_key
from services.auth.policy import next_period_start, period_of
from tests.integration.auth.auth_calls import (
    OK,
    OVER_LIMIT,
    PRICES,
    Code,
    Policy,
    add_key,
    add_tenant,
    assert_denied,
    bearer,
    is_allowed,
    refused,
    reserve,
    settle,
    wait_until,
)
from tests.integration.auth.auth_server import (
    ADMIN_PATH,
    headers_of,
    running_auth,
    status_in_header,
)
from tests.status_details import error_details, unpacked

# ext_authz: envoy.service.auth.v3.Authorization/Check.

async def test_a_call_without_a_key_is_denied_unauthenticated_401_saying_how_to_send_one(auth):
    for authorization in (None, ""):
        response = await auth.check(authorization)
        assert_denied(response, Code.UNAUTHENTICATED, 401, "API_KEY_MISSING")
        assert "authorization: Bearer <api key>" in response.denied_response.body


MALFORMED_OR_UNKNOWN = {
    "basic": ("Basic dXNlcjpwYXNzd29yZA==", "API_KEY_MALFORMED"),
    "bearer-alone": ("Bearer", "API_KEY_MALFORMED"),
    "no-bearer": (new_key().secret, "API_KEY_MALFORMED"),
    "oversized": ("Bearer " + "x" * 600, "API_KEY_MALFORMED"),
    "empty-key": ("Bearer ", "API_KEY_INVALID"),
    "short-key": ("Bearer mk_live_short", "API_KEY_INVALID"),
    "control-characters": ("Bearer \u202emk_live_\x00", "API_KEY_INVALID"),
    "never-issued": ("Bearer " + new_key().secret, "API_KEY_INVALID"),
}


@pytest.mark.parametrize("authorization, reason", MALFORMED_OR_UNKNOWN.values(),
                         ids=MALFORMED_OR_UNKNOWN.keys())
async def test_a_malformed_or_unknown_key_is_denied_unauthenticated(auth, authorization, reason):
    assert_denied(await auth.check(authorization), Code.UNAUTHENTICATED, 401, reason)


async def test_a_known_key_id_with_the_wrong_secret_is_denied(auth):
    await add_tenant(auth)
    key = await add_key(auth)
    forged = key.secret[:-4] + ("AAAA" if not key.secret.endswith("AAAA") else "BBBB")
    assert_denied(await auth.check(bearer(forged)), Code.UNAUTHENTICATED, 401,
                  "API_KEY_INVALID")
    assert is_allowed(await auth.check(bearer(key.secret)))


async def test_an_allowed_call_gets_its_tenant_policy_version_and_key_id_as_headers(auth):
    policy = Policy(allowed_models=["tiny"], max_tokens_per_request=256, requests_per_minute=60,
                    monthly_budget_micro_usd=5_000, prices=PRICES, data_region="eu-west")
    await add_tenant(auth, "acme", policy)
    key = await add_key(auth)
    response = await auth.check(bearer(key.secret))
    assert is_allowed(response)
    headers = headers_of(response.ok_response.headers)
    assert set(headers) == {"x-meshllm-tenant", "x-meshllm-policy-bin",
                            "x-meshllm-policy-version", "x-meshllm-key-id",
                            "x-meshllm-requests-per-minute"}
    assert headers["x-meshllm-tenant"] == "acme"
    assert headers["x-meshllm-requests-per-minute"] == "60"
    assert Policy.FromString(base64.b64decode(headers["x-meshllm-policy-bin"])) == policy
    assert headers["x-meshllm-policy-version"] == "1"
    assert headers["x-meshllm-key-id"] == key.key.id
    # Envoy must replace, never add to, whatever the request carries under these names.
    assert {option.append_action for option in response.ok_response.headers} == {
        base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}


async def test_the_admin_api_needs_an_admin_key(auth):
    await add_tenant(auth)
    client, admin = await add_key(auth), await add_key(auth, role=auth_pb2.API_KEY_ROLE_ADMIN)
    response = await auth.check(bearer(client.secret), path=ADMIN_PATH)
    assert_denied(response, Code.PERMISSION_DENIED, 403, "ADMIN_ROLE_REQUIRED")
    assert client.key.id in response.denied_response.body
    assert is_allowed(await auth.check(bearer(admin.secret), path=ADMIN_PATH))
    allowed = await auth.check(bearer(client.secret))
    assert is_allowed(allowed)
    # Without a request limit Envoy need not ask the rate limit service: no limit header.
    assert "x-meshllm-requests-per-minute" not in headers_of(allowed.ok_response.headers)


async def test_a_revoked_key_is_denied_within_a_second_on_two_replicas_sharing_the_store(
        sqlite_url):
    async with running_auth(sqlite_url) as first, running_auth(sqlite_url) as second:
        await add_tenant(first)
        key = await add_key(first)
        for replica in (first, second):  # both hold the key in their caches now
            assert is_allowed(await replica.check(bearer(key.secret)))
        await first.admin.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key.key.id))
        for replica in (first, second):
            async def denied(replica=replica):
                return not is_allowed(await replica.check(bearer(key.secret)))
            await wait_until(denied, within_seconds=1.0)
            assert_denied(await replica.check(bearer(key.secret)), Code.UNAUTHENTICATED, 401,
                          "API_KEY_INVALID")


async def test_a_policy_update_reaches_the_other_replicas_headers_within_a_second(sqlite_url):
    async with running_auth(sqlite_url) as first, running_auth(sqlite_url) as second:
        await add_tenant(first, "acme", Policy(requests_per_minute=10))
        key = await add_key(first)
        assert is_allowed(await second.check(bearer(key.secret)))
        await first.admin.UpdatePolicy(auth_pb2.UpdatePolicyRequest(
            tenant_id="acme", policy=Policy(requests_per_minute=20)))

        async def updated():
            headers = headers_of((await second.check(bearer(key.secret))).ok_response.headers)
            return headers["x-meshllm-policy-version"] == "2" and Policy.FromString(
                base64.b64decode(headers["x-meshllm-policy-bin"])).requests_per_minute == 20
        await wait_until(updated, within_seconds=1.0)


# Rate limits: envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit.

async def test_the_61st_request_in_a_minute_is_over_limit_with_retry_info_and_others_are_not(
        auth):
    for tenant_id in ("acme", "globex"):
        await add_tenant(auth, tenant_id, Policy(requests_per_minute=60))
    answers = [await auth.should_rate_limit("acme") for _ in range(60)]
    assert {answer.overall_code for answer in answers} == {OK}
    assert [a.statuses[0].limit_remaining for a in answers] == list(range(59, -1, -1))
    over = await auth.should_rate_limit("acme")
    assert over.overall_code == OVER_LIMIT
    status = over.statuses[0]
    assert status.code == OVER_LIMIT
    assert timedelta(0) < status.duration_until_reset.ToTimedelta() <= timedelta(seconds=61)
    assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (
        60, rls_pb2.RateLimitResponse.RateLimit.MINUTE)
    headers = headers_of(over.response_headers_to_add)
    details = status_in_header(headers["grpc-status-details-bin"])
    assert details.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert "tenant 'acme' may send 60 requests per minute" in details.message
    found = unpacked(details)
    assert found["ErrorInfo"].reason == "REQUESTS_PER_MINUTE_EXCEEDED"
    assert timedelta(0) < found["RetryInfo"].retry_delay.ToTimedelta() <= timedelta(seconds=60)
    assert 1 <= int(headers["retry-after"]) <= 60
    assert (await auth.should_rate_limit("globex")).overall_code == OK


async def test_calls_without_a_tenant_or_of_an_unknown_or_unlimited_tenant_are_not_limited(
        auth):
    await add_tenant(auth, "free")  # the default policy: no requests-per-minute limit
    for tenant in (None, "", "ghost", "free"):
        for _ in range(3):
            answer = await auth.should_rate_limit(tenant)
            assert answer.overall_code == OK and not answer.response_headers_to_add


# Budgets, token and stream limits: meshllm.auth.v1.UsageService.

async def test_fifty_concurrent_reserves_on_a_budget_for_ten_admit_ten_and_tell_the_rest_why(
        auth):
    policy = Policy(monthly_budget_micro_usd=1_000, prices=PRICES)  # 100 a call reserved
    await add_tenant(auth, "acme", policy)

    async def attempt(n: int):
        try:
            return n, await auth.usage.Reserve(reserve(request_id=f"r{n}"))
        except grpc.aio.AioRpcError as error:
            return n, error
    results = await asyncio.gather(*(attempt(n) for n in range(50)))
    admitted = [n for n, result in results if isinstance(result, auth_pb2.ReserveResponse)]
    refusals = [result for _, result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert (len(admitted), len(refusals)) == (10, 40)
    resets = next_period_start(period_of(datetime.now(UTC)))
    for error in refusals:
        assert error.code() == Code.RESOURCE_EXHAUSTED
        assert "the monthly budget of tenant 'acme' (1000 micro-USD" in error.details()
        assert f"it resets at {resets.isoformat()}" in error.details()
        details = error_details(error)
        assert details["ErrorInfo"].reason == "BUDGET_EXHAUSTED"
        delay = details["RetryInfo"].retry_delay.ToTimedelta()
        assert timedelta(0) < delay <= resets - datetime.now(UTC) + timedelta(seconds=5)
    usage = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    assert (usage.reserved_micro_usd, usage.budget_micro_usd) == (1_000, 1_000)
    assert usage.budget_resets.ToDatetime(UTC) == resets

    costs = []
    for n in admitted:
        settled = await auth.usage.Settle(settle(request_id=f"r{n}", completion=n))
        assert settled.recorded
        assert settled.cost_micro_usd == cost_micro_usd(policy, "tiny", 30, n)
        costs.append(settled.cost_micro_usd)
    usage = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    assert usage.total.cost_micro_usd == sum(costs) == usage.reserved_micro_usd
    assert (usage.total.requests, usage.total.prompt_tokens, usage.total.completion_tokens) == (
        10, 300, sum(admitted))


async def test_settling_a_call_twice_records_it_once_and_leaves_the_totals_unchanged(auth):
    await add_tenant(auth, "acme", Policy(monthly_budget_micro_usd=1_000, prices=PRICES))
    await auth.usage.Reserve(reserve())
    first = await auth.usage.Settle(settle())
    before = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    again = await auth.usage.Settle(settle(completion=60))  # a retry that got the count wrong
    after = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    assert (first.recorded, again.recorded) == (True, False)
    assert before == after and after.total.cost_micro_usd == first.cost_micro_usd == 50
    reused = await refused(auth.usage.Reserve(reserve()))  # a new call needs a new request id
    assert reused.code() == Code.ALREADY_EXISTS
    assert error_details(reused)["ErrorInfo"].reason == "REQUEST_ID_REUSED"


async def test_tokens_per_minute_are_held_at_the_calls_bound_and_settled_to_what_it_used(auth):
    await add_tenant(auth, "acme", Policy(tokens_per_minute=1_000))
    await auth.usage.Reserve(reserve(request_id="r1", prompt=100, completion=500))
    error = await refused(auth.usage.Reserve(reserve(request_id="r2", prompt=0,
                                                     completion=500)))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "may use 1000 tokens per minute" in error.details()
    details = error_details(error)
    assert details["ErrorInfo"].reason == "TOKENS_PER_MINUTE_EXCEEDED"
    assert timedelta(0) < details["RetryInfo"].retry_delay.ToTimedelta() <= timedelta(seconds=60)
    await auth.usage.Settle(settle(request_id="r1", prompt=100, completion=100))  # 200 used
    await auth.usage.Reserve(reserve(request_id="r2", prompt=0, completion=500))  # 700 now
    too_big = await refused(auth.usage.Reserve(reserve(request_id="r3", prompt=500,
                                                       completion=600)))
    assert too_big.code() == Code.PERMISSION_DENIED
    assert error_details(too_big)["ErrorInfo"].reason == "CALL_OVER_TOKEN_LIMIT"


async def test_a_concurrent_stream_slot_is_held_until_the_call_settles(auth):
    await add_tenant(auth, "acme", Policy(max_concurrent_streams=2))
    for request_id in ("r1", "r2"):
        await auth.usage.Reserve(reserve(request_id=request_id))
    error = await refused(auth.usage.Reserve(reserve(request_id="r3")))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "has 2 streams open; its policy allows 2 at once" in error.details()
    assert error_details(error)["ErrorInfo"].reason == "CONCURRENT_STREAMS_EXCEEDED"
    await auth.usage.Settle(settle(request_id="r1"))
    await auth.usage.Reserve(reserve(request_id="r3"))


async def test_a_reserve_the_budget_refuses_gives_back_its_stream_slot_and_tokens(auth):
    await add_tenant(auth, "acme", Policy(max_concurrent_streams=1, tokens_per_minute=150,
                                          monthly_budget_micro_usd=99, prices=PRICES))
    error = await refused(auth.usage.Reserve(reserve(request_id="r1")))  # costs up to 100
    assert error_details(error)["ErrorInfo"].reason == "BUDGET_EXHAUSTED"
    await auth.usage.Reserve(reserve(request_id="r2", prompt=40, completion=50))  # 90 fits all


async def test_reserving_for_an_unknown_tenant_is_a_failed_precondition(auth):
    error = await refused(auth.usage.Reserve(reserve(tenant_id="ghost")))
    assert error.code() == Code.FAILED_PRECONDITION
    assert "tenant 'ghost' does not exist" in error.details()


IMPOSSIBLE_CALLS = {
    "reserve-no-request-id": ("Reserve", reserve(request_id=""), "request_id"),
    "reserve-nul-request-id": ("Reserve", reserve(request_id="r\x00"), "request_id"),
    "reserve-negative-prompt": ("Reserve", reserve(prompt=-1_000), "max_prompt_tokens"),
    "reserve-negative-completion": ("Reserve", reserve(completion=-1), "max_completion_tokens"),
    "reserve-nul-label": ("Reserve", reserve(labels={"team": "a\x00b"}), "labels"),
    "reserve-100-labels": ("Reserve", reserve(labels={f"k{i}": "v" for i in range(100)}),
                           "labels"),
    "settle-no-request-id": ("Settle", settle(request_id=""), "request_id"),
    "settle-negative-prompt": ("Settle", settle(prompt=-1), "prompt_tokens"),
    "settle-negative-completion": ("Settle", settle(completion=-1_000), "completion_tokens"),
}


@pytest.mark.parametrize("method, request_, field", IMPOSSIBLE_CALLS.values(),
                         ids=IMPOSSIBLE_CALLS.keys())
async def test_reserve_and_settle_refuse_impossible_calls_naming_the_field(auth, method, request_,
                                                                          field):
    await add_tenant(auth, "acme", Policy(monthly_budget_micro_usd=1_000, prices=PRICES,
                                          tokens_per_minute=10_000, max_concurrent_streams=5))
    error = await refused(getattr(auth.usage, method)(request_))
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert field in error.details()
    usage = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    assert usage.total.requests == 0 and usage.reserved_micro_usd == 0


async def test_a_settled_call_is_recorded_and_charged_even_with_labels_the_ledger_cannot_keep(
        auth):
    await add_tenant(auth, "acme", Policy(prices=PRICES))  # priced, so nothing is reserved
    labels = {"team": "search", "bad": "a\x00b", **{f"x{i:03}": "v" for i in range(100)}}
    settled = await auth.usage.Settle(settle(labels=labels))
    assert settled.recorded and settled.cost_micro_usd == 50
    usage = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme",
                                                               group_by_label="team"))
    assert [(row.label_value, row.cost_micro_usd) for row in usage.rows] == [("search", 50)]


# A store outage: calls fail as UNAVAILABLE (Envoy then fails them closed), and recover.

async def test_with_the_store_down_reserve_and_checks_of_uncached_keys_are_unavailable(postgres):
    url = postgres.create_database(f"auth_outage_{os.getpid()}_{time.monotonic_ns()}")
    async with running_auth(url) as auth:
        await add_tenant(auth, "acme", Policy(monthly_budget_micro_usd=1_000, prices=PRICES))
        key = await add_key(auth)  # never checked: in no cache
        # Stopped, not killed: a killed postmaster's backends may still answer a query or two
        # before they notice, and the outage would begin at a moment the test cannot see.
        postgres.stop()
        try:
            for call in (lambda: auth.usage.Reserve(reserve()),
                         lambda: auth.usage.Settle(settle()),
                         lambda: auth.admin.GetTenant(auth_pb2.GetTenantRequest(tenant_id="acme"))):
                error = await refused(call())
                assert error.code() == Code.UNAVAILABLE, (error.code(), error.details())
                assert "the auth store cannot be reached; retry shortly" == error.details()
                details = error_details(error)
                assert details["ErrorInfo"].reason == "STORE_UNAVAILABLE"
                assert details["RetryInfo"].retry_delay.ToTimedelta() > timedelta(0)
            error = await refused(auth.check(bearer(key.secret)))
            assert error.code() == Code.UNAVAILABLE
        finally:
            postgres.start()
        await wait_until(lambda: allowed_now(auth, key.secret), within_seconds=10)
        assert (await auth.usage.Reserve(reserve())).reserved_micro_usd == 100


async def allowed_now(auth, secret: str) -> bool:
    try:
        return is_allowed(await auth.check(bearer(secret)))
    except grpc.aio.AioRpcError:
        return False


async def test_a_settle_batch_records_each_call_once_and_refuses_only_the_bad_one(auth):
    await add_tenant(auth, "acme", Policy(prices=PRICES))
    await auth.usage.Settle(settle(request_id="earlier"))
    reply = await auth.usage.SettleBatch(auth_pb2.SettleBatchRequest(calls=[
        settle(request_id="b1", prompt=10, completion=10),
        settle(request_id="earlier"),  # settled already: not charged twice
        settle(request_id="b2", completion=-1),  # refused alone
        settle(request_id="b3", tenant_id="nobody"),  # refused alone
        settle(request_id="b4", prompt=1, completion=1),
    ]))
    results = {r.request_id: r for r in reply.results}
    assert [r.request_id for r in reply.results] == ["b1", "earlier", "b2", "b3", "b4"]
    assert (results["b1"].recorded, results["b1"].cost_micro_usd) == (True, 20)
    assert not results["earlier"].recorded and not results["earlier"].error
    assert "completion_tokens" in results["b2"].error and not results["b2"].recorded
    assert "nobody" in results["b3"].error
    assert results["b4"].recorded
    usage = await auth.admin.GetUsage(auth_pb2.GetUsageRequest(tenant_id="acme"))
    assert usage.total.requests == 3  # earlier, b1, b4
