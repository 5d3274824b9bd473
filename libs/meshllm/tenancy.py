"""Who a call belongs to, as Envoy asserts it.

ext_authz (the auth service) sets these headers after the public listener stripped any copy a
client sent, so a service behind Envoy trusts them and nothing else: never a request field."""
import grpc

from meshllm.api.auth.v1 import auth_pb2
from meshllm.errors import CallRefused

TENANT_HEADER = "x-meshllm-tenant"
POLICY_HEADER = "x-meshllm-policy-bin"  # a serialized meshllm.auth.v1.Policy
POLICY_VERSION_HEADER = "x-meshllm-policy-version"
KEY_ID_HEADER = "x-meshllm-key-id"
REQUEST_LIMIT_HEADER = "x-meshllm-requests-per-minute"
"""Set only for a tenant with a request limit: Envoy asks the rate limit service only then."""
IDENTITY_HEADERS = (TENANT_HEADER, POLICY_HEADER, POLICY_VERSION_HEADER, KEY_ID_HEADER,
                    REQUEST_LIMIT_HEADER)


class Tenancy:
    """A call's tenant and policy, read from its invocation metadata."""

    __slots__ = ("tenant", "policy", "policy_version", "_policy_bytes")

    def __init__(self, tenant: str, policy_bytes: bytes, policy_version: int):
        self.tenant = tenant
        self.policy = auth_pb2.Policy.FromString(policy_bytes)
        self.policy_version = policy_version
        self._policy_bytes = policy_bytes

    @classmethod
    def of(cls, metadata) -> "Tenancy | None":
        """None when the call carries no tenant (it did not come through the public listener)."""
        tenant, policy, version = "", b"", 0
        for key, value in metadata or ():
            if key == TENANT_HEADER:
                tenant = value
            elif key == POLICY_HEADER:
                policy = value
            elif key == POLICY_VERSION_HEADER and value.isdigit():
                version = int(value)
        if not tenant:
            return None
        return cls(tenant, policy, version)

    def metadata(self) -> list[tuple[str, str | bytes]]:
        """The headers this tenancy was read from, for a call the router makes on its behalf
        (moderation judges under the same policy): the policy's bytes as they came."""
        return [(TENANT_HEADER, self.tenant), (POLICY_HEADER, self._policy_bytes),
                (POLICY_VERSION_HEADER, str(self.policy_version))]


def required_tenancy(metadata, why: str) -> Tenancy:
    """The call's tenancy; UNAUTHENTICATED saying `why` the service needs one when it has
    none."""
    tenancy = Tenancy.of(metadata)
    if tenancy is None:
        raise CallRefused(grpc.StatusCode.UNAUTHENTICATED, f"the call carries no tenant: {why}",
                          reason="TENANT_MISSING")
    return tenancy


def cost_micro_usd(policy: auth_pb2.Policy, model: str, prompt_tokens: int,
                   completion_tokens: int) -> int:
    """What a call costs under the tenant's prices, rounded up to a whole micro-dollar; a model
    without a price is free."""
    price = policy.prices.get(model)
    if price is None:
        return 0
    return -(-(prompt_tokens * price.input_per_1k_micro_usd
               + completion_tokens * price.output_per_1k_micro_usd) // 1000)
