"""For tests that call the router directly: the headers Envoy's ext_authz would have added."""
import base64

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.tenancy import POLICY_HEADER, TENANT_HEADER

TEST_TENANT = "test-tenant"
UNMODERATED = auth_pb2.Policy(moderation=moderation_pb2.ModerationPolicy(
    input_disabled=True, output_disabled=True))
"""The policy these calls carry unless told: they reach the router without Envoy's mesh
listener behind it, so there is no moderation service to ask (tests/integration/mesh/
test_moderation.py tests moderation through the whole mesh)."""


def tenant_metadata(tenant: str = TEST_TENANT,
                    policy: auth_pb2.Policy | None = None) -> tuple[tuple[str, bytes | str], ...]:
    policy = policy or UNMODERATED
    return ((TENANT_HEADER, tenant), (POLICY_HEADER, policy.SerializeToString()))


def tenant_headers(tenant: str = TEST_TENANT) -> list[tuple[str, str]]:
    """The same as raw HTTP/2 headers (a -bin value travels base64-encoded)."""
    return [(TENANT_HEADER, tenant),
            (POLICY_HEADER, base64.b64encode(UNMODERATED.SerializeToString()).decode())]


class AsTenant:
    """A stub whose every call carries `tenant_metadata()`, as if it came through Envoy."""

    def __init__(self, stub, tenant: str = TEST_TENANT, policy: auth_pb2.Policy | None = None):
        self._stub = stub
        self._metadata = tenant_metadata(tenant, policy)

    def __getattr__(self, method: str):
        call = getattr(self._stub, method)
        return lambda request, metadata=(), **options: call(
            request, metadata=(*metadata, *self._metadata), **options)
