"""Requests per minute per tenant, as Envoy's rate-limit filter asks at the edge.

Envoy sends the descriptor ("tenant", <id>) that ext_authz put in x-meshllm-tenant; the answer
is OK or OVER_LIMIT. A refusal carries google.rpc details (ErrorInfo, RetryInfo) in
grpc-status-details-bin, which Envoy adds to the RESOURCE_EXHAUSTED reply it sends the client."""
import base64
import uuid
from dataclasses import dataclass

import grpc

from meshllm.errors import STATUS_DETAILS_KEY, status_with_details
from meshllm.logging import get_logger
from services.auth.identity_cache import IdentityCache
from services.auth.window_counters import CountersUnavailable

log = get_logger(__name__)
TENANT_DESCRIPTOR = "tenant"


@dataclass(frozen=True)
class EdgeDecision:
    allowed: bool
    limit: int = 0
    remaining: int = 0
    retry_after_seconds: float = 0.0
    reason: str = ""
    message: str = ""

    def refusal_headers(self) -> list[tuple[str, str]]:
        """grpc-status-details-bin (and retry-after) for the reply Envoy sends the client."""
        status = status_with_details(grpc.StatusCode.RESOURCE_EXHAUSTED, self.message,
                                     self.reason, retry_after=self.retry_after_seconds)
        details = dict(status.trailing_metadata)[STATUS_DETAILS_KEY]
        return [(STATUS_DETAILS_KEY, base64.b64encode(details).decode().rstrip("=")),
                ("retry-after", str(max(1, round(self.retry_after_seconds))))]


class EdgeLimits:
    def __init__(self, counters, identities: IdentityCache, fail_open: bool):
        self._counters = counters
        self._identities = identities
        self._fail_open = fail_open

    async def check(self, tenant_id: str, hits: int) -> EdgeDecision:
        tenant = await self._identities.tenant(tenant_id)
        if tenant is None or not tenant.policy.requests_per_minute:
            return EdgeDecision(True)
        limit = tenant.policy.requests_per_minute
        try:
            decision = await self._counters.take(f"requests:{tenant_id}", hits, limit, 60.0,
                                                 uuid.uuid4().hex)
        except CountersUnavailable as error:
            if self._fail_open:
                log.warning("limits_unavailable_failing_open", tenant=tenant_id, error=str(error))
                return EdgeDecision(True)
            return EdgeDecision(False, limit, 0, 1.0, "LIMITS_UNAVAILABLE",
                                "the rate-limit counters cannot be reached, and this mesh "
                                "refuses calls it cannot count; retry shortly")
        if decision.allowed:
            return EdgeDecision(True, limit, max(0, limit - decision.used))
        return EdgeDecision(False, limit, 0, decision.retry_after_seconds,
                            "REQUESTS_PER_MINUTE_EXCEEDED",
                            f"tenant {tenant_id!r} may send {limit} requests per minute; retry "
                            f"in {decision.retry_after_seconds:.1f} s")
