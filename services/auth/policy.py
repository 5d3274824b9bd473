"""Tenant policies: the default one, what a valid one looks like, and what a call costs."""
import re
from datetime import UTC, datetime

from meshllm.api.auth.v1 import auth_pb2
from meshllm.collection_access import ALL_COLLECTIONS
from meshllm.errors import CallRefused
from meshllm.moderation_policy import check_moderation_policy
import grpc

# Matched with fullmatch: `$` would also accept a trailing newline.
TENANT_ID_FORM = re.compile(r"[a-z0-9][a-z0-9-]{0,61}[a-z0-9]")
_PERIOD_FORM = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_MAX_LIST = 256
_MAX_NAME = 128
# A million dollars per 1k tokens: a call's worst case (2 x 2^31 tokens) then stays in int64.
MAX_PRICE_PER_1K_MICRO_USD = 10**12


def default_policy() -> auth_pb2.Policy:
    """What a tenant created without a policy gets: every model and every collection of its
    own, no limits, no budget."""
    return auth_pb2.Policy(moderation_strictness=auth_pb2.MODERATION_STRICTNESS_MEDIUM,
                           allowed_collections=[ALL_COLLECTIONS])


def check_tenant_id(tenant_id: str, field: str = "tenant_id") -> None:
    if not TENANT_ID_FORM.fullmatch(tenant_id):
        raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{field} must be 2 to 63 lowercase letters, digits or dashes, "
                          f"starting and ending with a letter or digit; got {tenant_id[:80]!r}",
                          reason="INVALID_TENANT_ID", field=field)


def check_policy(policy: auth_pb2.Policy, field: str = "policy") -> None:
    """Refuses a policy the mesh could not enforce as written, naming the field at fault."""
    for name in ("allowed_models", "allowed_collections"):
        values = getattr(policy, name)
        if len(values) > _MAX_LIST:
            raise _invalid(f"{field}.{name}", f"{field}.{name} lists {len(values)} entries; "
                                              f"at most {_MAX_LIST}")
        for value in values:
            if not value or len(value) > _MAX_NAME:
                raise _invalid(f"{field}.{name}", f"every entry of {field}.{name} must be 1 to "
                                                  f"{_MAX_NAME} characters")
    for name in ("max_tokens_per_request", "max_concurrent_streams", "requests_per_minute",
                 "tokens_per_minute"):
        if getattr(policy, name) < 0:
            raise _invalid(f"{field}.{name}", f"{field}.{name} must be 0 (no limit) or more")
    if policy.HasField("monthly_budget_micro_usd") and policy.monthly_budget_micro_usd < 0:
        raise _invalid(f"{field}.monthly_budget_micro_usd",
                       f"{field}.monthly_budget_micro_usd must be 0 or more")
    for model, price in policy.prices.items():
        if not model or len(model) > _MAX_NAME:
            raise _invalid(f"{field}.prices", f"model names in {field}.prices must be 1 to "
                                              f"{_MAX_NAME} characters")
        if price.input_per_1k_micro_usd < 0 or price.output_per_1k_micro_usd < 0:
            raise _invalid(f"{field}.prices", f"the price of {model!r} must not be negative")
        if max(price.input_per_1k_micro_usd,
               price.output_per_1k_micro_usd) > MAX_PRICE_PER_1K_MICRO_USD:
            raise _invalid(f"{field}.prices", f"the price of {model!r} is above "
                                              f"{MAX_PRICE_PER_1K_MICRO_USD} micro-USD per 1k "
                                              f"tokens")
    if len(policy.prices) > _MAX_LIST:
        raise _invalid(f"{field}.prices", f"{field}.prices lists more than {_MAX_LIST} models")
    if len(policy.data_region) > 64:
        raise _invalid(f"{field}.data_region", f"{field}.data_region is at most 64 characters")
    if len(policy.label_limits) > _MAX_LIST:
        raise _invalid(f"{field}.label_limits", f"{field}.label_limits lists more than "
                                                f"{_MAX_LIST} limits")
    scopes = set()
    for limit in policy.label_limits:
        if not limit.key or not limit.value or len(limit.key) > _MAX_NAME \
                or len(limit.value) > _MAX_NAME:
            raise _invalid(f"{field}.label_limits", f"every label limit needs a key and a value "
                                                    f"of 1 to {_MAX_NAME} characters")
        if limit.monthly_budget_micro_usd < 0:
            raise _invalid(f"{field}.label_limits", f"the budget of label {limit.key}="
                                                    f"{limit.value} must not be negative")
        # Two limits with one scope name would be one budget held twice by a reserve.
        scope = label_scope(limit.key, limit.value)
        if scope in scopes:
            raise _invalid(f"{field}.label_limits", f"{field}.label_limits has two limits for "
                                                    f"{limit.key}={limit.value}; keep one")
        scopes.add(scope)
    if policy.moderation_strictness not in auth_pb2.ModerationStrictness.values():
        raise _invalid(f"{field}.moderation_strictness",
                       f"{field}.moderation_strictness {policy.moderation_strictness} is unknown")
    if problem := check_moderation_policy(policy.moderation, f"{field}.moderation"):
        raise _invalid(*problem)


def budget_scopes(policy: auth_pb2.Policy, labels) -> list[tuple[str, int]]:
    """The budgets a call with `labels` spends from, as (scope, monthly limit)."""
    scopes = []
    if policy.HasField("monthly_budget_micro_usd"):
        scopes.append(("tenant", policy.monthly_budget_micro_usd))
    for limit in policy.label_limits:
        if labels.get(limit.key) == limit.value:
            scopes.append((label_scope(limit.key, limit.value), limit.monthly_budget_micro_usd))
    return scopes


def label_scope(key: str, value: str) -> str:
    return f"label:{key}={value}"


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_start(period: str) -> datetime:
    """Raises ValueError unless `period` is "YYYY-MM" (strptime alone takes "2026-1" too,
    a period no ledger row is written under)."""
    if not _PERIOD_FORM.fullmatch(period):
        raise ValueError(f"a period is a month as YYYY-MM, got {period[:40]!r}")
    return datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)


def next_period_start(period: str) -> datetime:
    start = period_start(period)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def _invalid(field: str, message: str) -> CallRefused:
    return CallRefused(grpc.StatusCode.INVALID_ARGUMENT, message, reason="INVALID_POLICY",
                       field=field)
