"""Paying for a call: reserve the most it can use before it starts, settle what it used.

A reservation holds, all or nothing, a concurrency slot, the call's worst case against the
tokens-per-minute limit, and its worst-case cost against every budget it spends from (the
tenant's month, label limits). The budget part is one transaction in the store, so concurrent
calls can never spend past a budget; settling charges the real cost once per request id."""
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from meshllm.errors import CallRefused
from meshllm.generate_input import MAX_LABEL_CHARS, MAX_LABELS, labels_are_storable
from meshllm.logging import get_logger
from meshllm.tenancy import cost_micro_usd
from services.auth import store as stores
from services.auth.identity_cache import IdentityCache, TenantView
from services.auth.policy import budget_scopes, next_period_start, period_of
from services.auth.window_counters import CountersUnavailable

log = get_logger(__name__)
MINUTE = 60.0


@dataclass(frozen=True)
class Reservation:
    amount_micro_usd: int


@dataclass(frozen=True)
class CallUsage:
    request_id: str
    tenant_id: str
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    outcome: str
    labels: dict[str, str]
    time_to_first_token_seconds: float | None
    total_seconds: float


class Accounting:
    def __init__(self, store: stores.AuthStore, counters, identities: IdentityCache,
                 reservation_seconds: float, limits_fail_open: bool):
        self._store = store
        self._counters = counters
        self._identities = identities
        self._reservation_seconds = reservation_seconds
        self._limits_fail_open = limits_fail_open

    async def reserve(self, request_id: str, tenant_id: str, model: str, max_prompt_tokens: int,
                      max_completion_tokens: int, labels: dict[str, str]) -> Reservation:
        _check_request_id(request_id)
        _check_counts(max_prompt_tokens=max_prompt_tokens,
                      max_completion_tokens=max_completion_tokens)
        if not labels_are_storable(labels):
            raise CallRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"labels: at most {MAX_LABELS}, each key 1 to {MAX_LABEL_CHARS} and each value "
                f"0 to {MAX_LABEL_CHARS} printable characters", reason="INVALID_LABELS",
                field="labels")
        tenant = await self._tenant(tenant_id)
        policy = tenant.policy
        undo = []
        try:
            if policy.max_concurrent_streams:
                decision = await self._limit(self._counters.acquire_slot(
                    f"streams:{tenant_id}", request_id, policy.max_concurrent_streams,
                    self._reservation_seconds))
                if decision is not None and not decision.allowed:
                    raise _over_limit(
                        "CONCURRENT_STREAMS_EXCEEDED",
                        f"tenant {tenant_id!r} has {decision.used} streams open; its policy "
                        f"allows {policy.max_concurrent_streams} at once", 1.0)
                undo.append(lambda: self._counters.release_slot(f"streams:{tenant_id}",
                                                                request_id))
            tokens = max_prompt_tokens + max_completion_tokens
            if policy.tokens_per_minute:
                decision = await self._limit(self._counters.take(
                    f"tokens:{tenant_id}", tokens, policy.tokens_per_minute, MINUTE, request_id))
                if decision is not None and decision.never_fits:
                    raise CallRefused(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"this call may use up to {tokens} tokens (prompt bound plus "
                        f"max_tokens), more than the {policy.tokens_per_minute} per minute "
                        f"tenant {tenant_id!r} may use: lower max_tokens or shorten the prompt",
                        reason="CALL_OVER_TOKEN_LIMIT", field="sampling.max_tokens")
                if decision is not None and not decision.allowed:
                    raise _over_limit(
                        "TOKENS_PER_MINUTE_EXCEEDED",
                        f"tenant {tenant_id!r} may use {policy.tokens_per_minute} tokens per "
                        f"minute; this call may use up to {tokens} (prompt bound plus "
                        f"max_tokens) and {decision.used} are used", decision.retry_after_seconds)
                undo.append(lambda: self._counters.adjust(f"tokens:{tenant_id}", request_id, 0))
            amount = cost_micro_usd(policy, model, max_prompt_tokens, max_completion_tokens)
            scopes = budget_scopes(policy, labels)
            if scopes:
                now = datetime.now(UTC)
                period = period_of(now)
                result = await self._store.reserve(
                    request_id, tenant_id, period, scopes, amount,
                    now + timedelta(seconds=self._reservation_seconds))
                if not result.admitted:
                    resets = next_period_start(period)
                    raise _over_limit(
                        "BUDGET_EXHAUSTED",
                        f"the {_scope_name(result.scope)} budget of tenant {tenant_id!r} "
                        f"({result.limit} micro-USD for {period}) cannot cover this call: "
                        f"{result.spent} spent, {result.reserved} held by running calls, this "
                        f"call may cost up to {amount}; it resets at {resets.isoformat()}",
                        (resets - now).total_seconds())
            return Reservation(amount)
        except BaseException:
            for step in reversed(undo):
                await self._quietly(step)
            raise

    async def settle(self, usage: CallUsage) -> tuple[int, bool]:
        """The call's cost, and whether it was recorded now (False: settled before)."""
        (settled,) = await self.settle_many([usage])
        if isinstance(settled, CallRefused):
            raise settled
        return settled

    async def settle_many(self, usages: list[CallUsage]) -> list[tuple[int, bool] | CallRefused]:
        """`settle` for each call, the ledger rows in one store transaction (one commit, not
        one per call); a call that cannot be settled gets its refusal, the others go on."""
        results: list[tuple[int, bool] | CallRefused] = []
        pending: list[tuple[int, CallUsage, stores.UsageRecord, TenantView]] = []
        for usage in usages:
            try:
                record, tenant = await self._record_of(usage)
            except CallRefused as refusal:
                results.append(refusal)
                continue
            pending.append((len(results), usage, record, tenant))
            results.append((record.cost_micro_usd, False))
        recorded = await self._store.settle_many([record for _, _, record, _ in pending])
        for (index, usage, record, tenant), was_recorded in zip(pending, recorded, strict=True):
            results[index] = (record.cost_micro_usd, was_recorded)
            await self._release_limits(usage, tenant.policy)
        return results

    async def _record_of(self, usage: CallUsage) -> tuple[stores.UsageRecord, TenantView]:
        _check_request_id(usage.request_id)
        _check_counts(prompt_tokens=usage.prompt_tokens,
                      completion_tokens=usage.completion_tokens)
        labels = storable_labels(usage.labels)
        if labels != usage.labels:
            # A call that ran is recorded and charged whatever its labels: refusing it would
            # make it free. Only calls without a reservation can get here with such labels.
            log.warning("unstorable_labels_dropped", request_id=usage.request_id,
                        dropped=len(usage.labels) - len(labels))
        tenant = await self._tenant(usage.tenant_id)
        policy = tenant.policy
        now = datetime.now(UTC)
        return stores.UsageRecord(
            request_id=usage.request_id, tenant_id=usage.tenant_id, period=period_of(now),
            model=usage.model, replica=usage.replica, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_micro_usd=cost_micro_usd(policy, usage.model, usage.prompt_tokens,
                                          usage.completion_tokens),
            labels=labels, outcome=usage.outcome,
            time_to_first_token_seconds=usage.time_to_first_token_seconds,
            total_seconds=usage.total_seconds, policy_version=tenant.policy_version,
            recorded_at=now,
            scopes=tuple(scope for scope, _ in budget_scopes(policy, labels))), tenant

    async def _release_limits(self, usage: CallUsage, policy) -> None:
        """The tokens-per-minute entry down to what the call used; its stream slot freed."""
        if policy.tokens_per_minute:
            await self._quietly(lambda: self._counters.adjust(
                f"tokens:{usage.tenant_id}", usage.request_id,
                usage.prompt_tokens + usage.completion_tokens))
        if policy.max_concurrent_streams:
            await self._quietly(lambda: self._counters.release_slot(
                f"streams:{usage.tenant_id}", usage.request_id))

    async def _tenant(self, tenant_id: str) -> TenantView:
        tenant = await self._identities.tenant(tenant_id)
        if tenant is None:
            raise CallRefused(grpc.StatusCode.FAILED_PRECONDITION,
                              f"tenant {tenant_id!r} does not exist", reason="UNKNOWN_TENANT",
                              field="tenant_id")
        return tenant

    async def _limit(self, decision_call):
        """A limit's decision; None when the counters are down and limits fail open."""
        try:
            return await decision_call
        except CountersUnavailable as error:
            if self._limits_fail_open:
                log.warning("limits_unavailable_failing_open", error=str(error))
                return None
            raise _over_limit("LIMITS_UNAVAILABLE",
                              "the rate-limit counters cannot be reached, and this mesh refuses "
                              "calls it cannot count; retry shortly", 1.0) from error

    @staticmethod
    async def _quietly(step) -> None:
        try:
            await step()
        except CountersUnavailable as error:
            # The slot's lease and the window's age put it right without us.
            log.warning("counter_update_lost", error=str(error))


def storable_labels(labels: dict[str, str]) -> dict[str, str]:
    """The labels the ledger keeps: the first MAX_LABELS (by key) of printable text; a NUL,
    for one, is more than PostgreSQL's text can hold."""
    kept = {key: value for key, value in labels.items()
            if 0 < len(key) <= MAX_LABEL_CHARS and len(value) <= MAX_LABEL_CHARS
            and key.isprintable() and value.isprintable()}
    return dict(sorted(kept.items())[:MAX_LABELS])


def _check_request_id(request_id: str) -> None:
    """Refuses only an id no ledger row can be keyed by (one empty id would make every call a
    retry of the first): Settle must record any call that ran, and the id may be the client's
    own x-request-id."""
    if not request_id or "\x00" in request_id:
        raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                          "request_id must be set (and hold no NUL character)",
                          reason="INVALID_REQUEST_ID", field="request_id")


def _check_counts(**counts: int) -> None:
    for name, count in counts.items():
        if count < 0:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{name} must be 0 or more, got {count}",
                              reason="INVALID_TOKEN_COUNT", field=name)


def _scope_name(scope: str) -> str:
    return "monthly" if scope == "tenant" else scope.removeprefix("label:")


def _over_limit(reason: str, message: str, retry_after: float) -> CallRefused:
    return CallRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason=reason,
                       retry_after=max(retry_after, 0.001))
