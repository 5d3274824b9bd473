"""Tenant policies as plain code: what a valid policy and tenant id look like (each refusal names
its field), which budgets a call spends from, budget periods, and what a call costs."""
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1.moderation_pb2 import (ACTION_BLOCK, CategoryRule,
                                                     ModerationPolicy)
from meshllm.errors import CallRefused
from meshllm.tenancy import (POLICY_HEADER, POLICY_VERSION_HEADER, TENANT_HEADER, Tenancy,
                             cost_micro_usd)
from services.auth.policy import (budget_scopes, check_policy, check_tenant_id, default_policy,
                                  next_period_start, period_of, period_start)

Policy = auth_pb2.Policy
LabelLimit = auth_pb2.LabelLimit
Price = auth_pb2.ModelPrice


def full_policy() -> auth_pb2.Policy:
    return Policy(
        allowed_models=["tiny", "small"], max_tokens_per_request=512, max_concurrent_streams=4,
        requests_per_minute=60, tokens_per_minute=10_000, monthly_budget_micro_usd=5_000_000,
        prices={"tiny": Price(input_per_1k_micro_usd=100, output_per_1k_micro_usd=300)},
        allowed_collections=["docs"], moderation_strictness=auth_pb2.MODERATION_STRICTNESS_HIGH,
        data_region="eu-west", label_limits=[LabelLimit(key="team", value="search",
                                                        monthly_budget_micro_usd=1_000)])


def refusal(policy: auth_pb2.Policy, field: str = "policy") -> CallRefused:
    with pytest.raises(CallRefused) as caught:
        check_policy(policy, field)
    return caught.value


def test_the_default_and_a_fully_set_policy_are_valid():
    check_policy(default_policy())
    check_policy(full_policy())
    check_policy(Policy(monthly_budget_micro_usd=0))  # a budget of nothing refuses every call
    check_policy(Policy(prices={"big": Price(input_per_1k_micro_usd=10**12,
                                             output_per_1k_micro_usd=10**12)}))


LONG = "m" * 129
BAD_POLICIES = [
    ("allowed_models", Policy(allowed_models=[f"m{i}" for i in range(257)])),
    ("allowed_models", Policy(allowed_models=["tiny", ""])),
    ("allowed_models", Policy(allowed_models=[LONG])),
    ("allowed_collections", Policy(allowed_collections=[""])),
    ("allowed_collections", Policy(allowed_collections=[f"c{i}" for i in range(257)])),
    ("max_tokens_per_request", Policy(max_tokens_per_request=-1)),
    ("max_concurrent_streams", Policy(max_concurrent_streams=-1)),
    ("requests_per_minute", Policy(requests_per_minute=-60)),
    ("tokens_per_minute", Policy(tokens_per_minute=-1)),
    ("monthly_budget_micro_usd", Policy(monthly_budget_micro_usd=-1)),
    ("prices", Policy(prices={"": Price(input_per_1k_micro_usd=1)})),
    ("prices", Policy(prices={LONG: Price(input_per_1k_micro_usd=1)})),
    ("prices", Policy(prices={"tiny": Price(input_per_1k_micro_usd=-1)})),
    ("prices", Policy(prices={"tiny": Price(output_per_1k_micro_usd=-1)})),
    ("prices", Policy(prices={f"m{i}": Price() for i in range(257)})),
    # Above this a call's worst case no longer fits the store's int64.
    ("prices", Policy(prices={"tiny": Price(output_per_1k_micro_usd=10**12 + 1)})),
    ("data_region", Policy(data_region="r" * 65)),
    ("label_limits", Policy(label_limits=[LabelLimit(key=f"k{i}", value="v")
                                          for i in range(257)])),
    ("label_limits", Policy(label_limits=[LabelLimit(key="", value="v")])),
    ("label_limits", Policy(label_limits=[LabelLimit(key="team", value="")])),
    ("label_limits", Policy(label_limits=[LabelLimit(key=LONG, value="v")])),
    ("label_limits", Policy(label_limits=[LabelLimit(key="k", value=LONG)])),
    ("label_limits", Policy(label_limits=[LabelLimit(key="team", value="search",
                                                     monthly_budget_micro_usd=-5)])),
    # Two limits on one label value would be one budget scope held twice.
    ("label_limits", Policy(label_limits=[
        LabelLimit(key="team", value="search", monthly_budget_micro_usd=5),
        LabelLimit(key="team", value="search", monthly_budget_micro_usd=9)])),
    ("label_limits", Policy(label_limits=[
        LabelLimit(key="a=b", value="c", monthly_budget_micro_usd=5),
        LabelLimit(key="a", value="b=c", monthly_budget_micro_usd=9)])),
    ("moderation_strictness", Policy(moderation_strictness=99)),
    # The moderation part: the same checks auth runs on every field (meshllm.moderation_policy).
    ("moderation.window_tokens", Policy(moderation=ModerationPolicy(window_tokens=-1))),
    ("moderation.rules[0].category", Policy(moderation=ModerationPolicy(rules=[
        CategoryRule(action=ACTION_BLOCK)]))),
]


@pytest.mark.parametrize("field, policy", BAD_POLICIES,
                         ids=[f"{field}-{n}" for n, (field, _) in enumerate(BAD_POLICIES)])
def test_a_policy_the_mesh_cannot_enforce_is_refused_naming_the_field(field, policy):
    refused = refusal(policy)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field == f"policy.{field}"
    assert refused.message
    assert refused.reason == "INVALID_POLICY"


def test_a_refused_policy_names_the_field_under_the_callers_path():
    refused = refusal(Policy(requests_per_minute=-1), field="request.policy")
    assert refused.field == "request.policy.requests_per_minute"
    assert "request.policy.requests_per_minute must be 0 (no limit) or more" == refused.message


@pytest.mark.parametrize("tenant_id", ["ab", "acme", "a-1", "0day", "a" * 63])
def test_tenant_ids_of_lowercase_letters_digits_and_inner_dashes_are_valid(tenant_id):
    check_tenant_id(tenant_id)


@pytest.mark.parametrize("tenant_id", [
    "", "a", "-ab", "ab-", "Acme", "a_b", "ac me", "a" * 64, "acme\n", "\nacme", "ac\x00me",
    "acm\u00e9", "ac\u202eme", "\u0661\u0662",
])
def test_any_other_tenant_id_is_refused_naming_the_field(tenant_id):
    with pytest.raises(CallRefused) as caught:
        check_tenant_id(tenant_id)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "tenant_id"
    assert "tenant_id must be 2 to 63 lowercase letters" in caught.value.message
    assert caught.value.reason == "INVALID_TENANT_ID"


def test_a_call_spends_from_the_tenant_budget_and_each_label_limit_it_matches():
    policy = Policy(monthly_budget_micro_usd=1_000, label_limits=[
        LabelLimit(key="team", value="search", monthly_budget_micro_usd=300),
        LabelLimit(key="team", value="ads", monthly_budget_micro_usd=200),
        LabelLimit(key="env", value="prod", monthly_budget_micro_usd=700)])
    assert budget_scopes(policy, {}) == [("tenant", 1_000)]
    assert budget_scopes(policy, {"team": "search", "env": "prod", "other": "x"}) == [
        ("tenant", 1_000), ("label:team=search", 300), ("label:env=prod", 700)]
    assert budget_scopes(policy, {"team": "SEARCH"}) == [("tenant", 1_000)]


def test_without_a_tenant_budget_only_label_limits_are_scopes_and_a_zero_budget_is_one():
    label_only = Policy(label_limits=[LabelLimit(key="team", value="ads",
                                                 monthly_budget_micro_usd=5)])
    assert budget_scopes(label_only, {}) == []
    assert budget_scopes(label_only, {"team": "ads"}) == [("label:team=ads", 5)]
    assert budget_scopes(Policy(monthly_budget_micro_usd=0), {}) == [("tenant", 0)]
    assert budget_scopes(default_policy(), {"team": "ads"}) == []


def test_the_period_is_the_utc_calendar_month():
    assert period_of(datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)) == "2026-05"
    # 00:30 on the 1st of January in UTC+2 is still December in UTC.
    assert period_of(datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))) \
        == "2026-12"
    assert period_start("2026-05") == datetime(2026, 5, 1, tzinfo=UTC)


def test_the_period_after_december_starts_in_january_of_the_next_year():
    assert next_period_start("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_period_start("2026-11") == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_period_start("2026-01") == datetime(2026, 2, 1, tzinfo=UTC)
    assert period_of(next_period_start("2026-12")) == "2027-01"


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "abc", "", "2026-1", "2026-05-01",
                                    " 2026-05", "26-05", "2026/05", "9999-12"])
def test_a_period_that_is_not_a_yyyy_mm_month_is_refused(period):
    with pytest.raises(ValueError):
        next_period_start(period)


def test_a_call_costs_its_tokens_at_the_models_price_rounded_up():
    policy = Policy(prices={"tiny": Price(input_per_1k_micro_usd=100,
                                          output_per_1k_micro_usd=300)})
    assert cost_micro_usd(policy, "tiny", 1_000, 1_000) == 400
    assert cost_micro_usd(policy, "tiny", 1, 0) == 1  # 0.1 micro-USD rounds up
    assert cost_micro_usd(policy, "tiny", 0, 0) == 0
    assert cost_micro_usd(policy, "unpriced", 10_000, 10_000) == 0


def test_tenancy_is_read_from_the_headers_envoy_set():
    policy = full_policy()
    tenancy = Tenancy.of([(TENANT_HEADER, "acme"), (POLICY_HEADER, policy.SerializeToString()),
                          (POLICY_VERSION_HEADER, "7"), ("authorization", "Bearer x")])
    assert (tenancy.tenant, tenancy.policy, tenancy.policy_version) == ("acme", policy, 7)
    assert Tenancy.of([("authorization", "Bearer x")]) is None
