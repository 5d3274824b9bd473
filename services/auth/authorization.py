"""Envoy's question for every public call — who is this, and may they call this method — as
plain Python: the bearer key in, a tenant and its policy (or a refusal with its reason) out."""
from dataclasses import dataclass

import grpc

from meshllm.api.auth.v1 import auth_pb2
from meshllm.tenancy import (KEY_ID_HEADER, POLICY_HEADER, POLICY_VERSION_HEADER,
                             REQUEST_LIMIT_HEADER, TENANT_HEADER)
from services.auth.identity_cache import Identity, IdentityCache

ADMIN_PATH_PREFIX = "/meshllm.auth.v1.AuthService/"
ADMIN_PATH_PREFIXES = (ADMIN_PATH_PREFIX, "/meshllm.moderation.v1.AuditService/")
"""The admin APIs: auth's own, and moderation's verdict trail. Admin keys only."""
_BEARER = "bearer "
_MAX_AUTHORIZATION = 512


@dataclass(frozen=True)
class Allowed:
    identity: Identity

    def headers(self) -> list[tuple[str, str]]:
        """What Envoy adds to the request before it reaches the router (or admin API)."""
        tenant = self.identity.tenant
        headers = [(TENANT_HEADER, tenant.tenant_id), (POLICY_HEADER, tenant.policy_header),
                   (POLICY_VERSION_HEADER, str(tenant.policy_version)),
                   (KEY_ID_HEADER, self.identity.key_id)]
        if tenant.policy.requests_per_minute:
            headers.append((REQUEST_LIMIT_HEADER, str(tenant.policy.requests_per_minute)))
        return headers


@dataclass(frozen=True)
class Denied:
    code: grpc.StatusCode
    reason: str
    message: str


def _unauthenticated(reason: str, message: str) -> Denied:
    return Denied(grpc.StatusCode.UNAUTHENTICATED, reason, message)


async def authorize(path: str, authorization: str | None,
                    identities: IdentityCache) -> Allowed | Denied:
    if not authorization:
        return _unauthenticated("API_KEY_MISSING",
                                "no API key: send the header 'authorization: Bearer <api key>'")
    if len(authorization) > _MAX_AUTHORIZATION or not authorization[:len(_BEARER)].lower() \
            == _BEARER:
        return _unauthenticated("API_KEY_MALFORMED",
                                "the authorization header must be 'Bearer <api key>'")
    identity = await identities.identity(authorization[len(_BEARER):].strip())
    if identity is None:
        return _unauthenticated("API_KEY_INVALID",
                                "the API key is unknown or revoked; ask your admin for a new one")
    if path.startswith(ADMIN_PATH_PREFIXES) and identity.role != auth_pb2.API_KEY_ROLE_ADMIN:
        return Denied(grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ROLE_REQUIRED",
                      f"API key {identity.key_id} is not an admin key; the admin API needs one")
    return Allowed(identity)
