"""The auth service's servicers: protos in, plain Python calls (authorization, edge_limits,
accounting, admin), protos out."""
import base64
import functools

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.errors import STATUS_DETAILS_KEY, CallRefused, status_with_details
from meshllm.logging import get_logger
from services.auth.accounting import Accounting, CallUsage
from services.auth.config import AuthSettings
from services.auth.admin import Admin, key_message, tenant_message
from services.auth.authorization import ADMIN_PATH_PREFIX, Allowed, authorize
from services.auth.edge_limits import TENANT_DESCRIPTOR, EdgeLimits
from services.auth.identity_cache import IdentityCache
from services.auth.store import RequestIdConflict, StoreUnavailable

log = get_logger(__name__)

_HTTP_STATUS = {grpc.StatusCode.UNAUTHENTICATED: http_status_pb2.Unauthorized,
                grpc.StatusCode.PERMISSION_DENIED: http_status_pb2.Forbidden}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
MAX_SETTLE_BATCH = 512


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value),
                                      append_action=_OVERWRITE)


def _details_header(code: grpc.StatusCode, message: str, reason: str,
                    retry_after: float | None = None) -> base_pb2.HeaderValueOption:
    status = status_with_details(code, message, reason, retry_after=retry_after)
    details = dict(status.trailing_metadata)[STATUS_DETAILS_KEY]
    return _header(STATUS_DETAILS_KEY, base64.b64encode(details).decode().rstrip("="))


def _store_errors(method):
    """Store failures as statuses a caller can act on: an unreachable store is UNAVAILABLE
    (Envoy then fails the public call closed), a reused request id ALREADY_EXISTS."""
    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            return await method(self, request, context)
        except StoreUnavailable as error:
            log.warning("store_unavailable", method=method.__name__, error=str(error))
            raise CallRefused(grpc.StatusCode.UNAVAILABLE,
                              "the auth store cannot be reached; retry shortly",
                              reason="STORE_UNAVAILABLE", retry_after=1.0) from None
        except RequestIdConflict as error:
            raise CallRefused(grpc.StatusCode.ALREADY_EXISTS, str(error),
                              reason="REQUEST_ID_REUSED", field="request_id") from None
    return handler


class ExternalAuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization: Envoy asks before every public call."""

    def __init__(self, identities: IdentityCache):
        self._identities = identities

    @_store_errors
    async def Check(self, request, context):
        http = request.attributes.request.http
        verdict = await authorize(http.path, http.headers.get("authorization"),
                                  self._identities)
        if isinstance(verdict, Allowed):
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=grpc.StatusCode.OK.value[0]),
                ok_response=external_auth_pb2.OkHttpResponse(
                    headers=[_header(key, value) for key, value in verdict.headers()]))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=verdict.code.value[0], message=verdict.message),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=_HTTP_STATUS[verdict.code]),
                headers=[_details_header(verdict.code, verdict.message, verdict.reason)],
                body=verdict.message))


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """envoy.service.ratelimit.v3.RateLimitService: requests per minute at the edge."""

    def __init__(self, limits: EdgeLimits):
        self._limits = limits

    @_store_errors
    async def ShouldRateLimit(self, request, context):
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for descriptor in request.descriptors:
            tenant = next((entry.value for entry in descriptor.entries
                           if entry.key == TENANT_DESCRIPTOR), "")
            if not tenant:
                response.statuses.add(code=rls_pb2.RateLimitResponse.OK)
                continue
            decision = await self._limits.check(tenant, request.hits_addend or 1)
            status = response.statuses.add(
                code=rls_pb2.RateLimitResponse.OK if decision.allowed
                else rls_pb2.RateLimitResponse.OVER_LIMIT,
                limit_remaining=decision.remaining)
            if decision.limit:
                status.current_limit.requests_per_unit = decision.limit
                status.current_limit.unit = rls_pb2.RateLimitResponse.RateLimit.MINUTE
            if not decision.allowed:
                status.duration_until_reset.FromMilliseconds(
                    int(decision.retry_after_seconds * 1000) + 1)
                response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
                # Envoy sends raw_body as grpc-message; the details must carry the same text.
                response.raw_body = decision.message.encode()
                response.response_headers_to_add.extend(
                    base_pb2.HeaderValue(key=key, value=value)
                    for key, value in decision.refusal_headers())
        return response


class UsageServicer(auth_pb2_grpc.UsageServiceServicer):
    """meshllm.auth.v1.UsageService: the router pays for each call here."""

    def __init__(self, accounting: Accounting):
        self._accounting = accounting

    @_store_errors
    async def Reserve(self, request, context):
        reservation = await self._accounting.reserve(
            request.request_id, request.tenant_id, request.model, request.max_prompt_tokens,
            request.max_completion_tokens, dict(request.labels))
        return auth_pb2.ReserveResponse(reserved_micro_usd=reservation.amount_micro_usd)

    @_store_errors
    async def Settle(self, request, context):
        cost, recorded = await self._accounting.settle(_call_usage(request))
        return auth_pb2.SettleResponse(cost_micro_usd=cost, recorded=recorded)

    @_store_errors
    async def SettleBatch(self, request, context):
        if len(request.calls) > MAX_SETTLE_BATCH:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"a batch holds at most {MAX_SETTLE_BATCH} calls, got "
                              f"{len(request.calls)}", reason="BATCH_TOO_LARGE", field="calls")
        settled = await self._accounting.settle_many([_call_usage(c) for c in request.calls])
        return auth_pb2.SettleBatchResponse(results=[
            auth_pb2.SettleBatchResult(request_id=call.request_id, error=outcome.message)
            if isinstance(outcome, CallRefused) else
            auth_pb2.SettleBatchResult(request_id=call.request_id, cost_micro_usd=outcome[0],
                                       recorded=outcome[1])
            for call, outcome in zip(request.calls, settled, strict=True)])


def _call_usage(request: auth_pb2.SettleRequest) -> CallUsage:
    return CallUsage(
        request_id=request.request_id, tenant_id=request.tenant_id, model=request.model,
        replica=request.replica, prompt_tokens=request.prompt_tokens,
        completion_tokens=request.completion_tokens, outcome=request.outcome,
        labels=dict(request.labels),
        time_to_first_token_seconds=request.time_to_first_token.ToTimedelta().total_seconds()
        if request.HasField("time_to_first_token") else None,
        total_seconds=request.total.ToTimedelta().total_seconds())


def _admin_only(method):
    """Checks the caller's own admin key again: Envoy's ext_authz already did, but the auth
    port is reachable from the mesh network too, and nothing else guards it there."""
    @functools.wraps(method)
    async def handler(self, request, context):
        authorization = next((value for key, value in context.invocation_metadata() or ()
                              if key == "authorization"), None)
        verdict = await authorize(ADMIN_PATH_PREFIX, authorization, self._identities)
        if not isinstance(verdict, Allowed):
            raise CallRefused(verdict.code, verdict.message, reason=verdict.reason)
        return await method(self, request, context)
    return handler


class AuthAdminServicer(auth_pb2_grpc.AuthServiceServicer):
    """meshllm.auth.v1.AuthService: the admin API, for admin keys only."""

    def __init__(self, admin: Admin, identities: IdentityCache):
        self._admin = admin
        self._identities = identities

    @_store_errors
    @_admin_only
    async def CreateTenant(self, request, context):
        record = await self._admin.create_tenant(
            request.tenant_id, request.display_name,
            request.policy if request.HasField("policy") else None)
        return auth_pb2.CreateTenantResponse(tenant=tenant_message(record))

    @_store_errors
    @_admin_only
    async def ListTenants(self, request, context):
        return auth_pb2.ListTenantsResponse(
            tenants=[tenant_message(record) for record in await self._admin.tenants()])

    @_store_errors
    @_admin_only
    async def GetTenant(self, request, context):
        return auth_pb2.GetTenantResponse(
            tenant=tenant_message(await self._admin.tenant(request.tenant_id)))

    @_store_errors
    @_admin_only
    async def CreateApiKey(self, request, context):
        record, secret = await self._admin.create_key(request.tenant_id, request.name,
                                                      request.role)
        return auth_pb2.CreateApiKeyResponse(key=key_message(record), secret=secret)

    @_store_errors
    @_admin_only
    async def ListApiKeys(self, request, context):
        return auth_pb2.ListApiKeysResponse(
            keys=[key_message(record) for record in await self._admin.keys(request.tenant_id)])

    @_store_errors
    @_admin_only
    async def RevokeApiKey(self, request, context):
        return auth_pb2.RevokeApiKeyResponse(
            key=key_message(await self._admin.revoke_key(request.key_id)))

    @_store_errors
    @_admin_only
    async def GetPolicy(self, request, context):
        record = await self._admin.tenant(request.tenant_id)
        return auth_pb2.GetPolicyResponse(policy=auth_pb2.Policy.FromString(record.policy),
                                          policy_version=record.policy_version)

    @_store_errors
    @_admin_only
    async def UpdatePolicy(self, request, context):
        version = await self._admin.update_policy(
            request.tenant_id, request.policy if request.HasField("policy") else None,
            request.expected_policy_version)
        return auth_pb2.UpdatePolicyResponse(policy=request.policy, policy_version=version)

    @_store_errors
    @_admin_only
    async def GetUsage(self, request, context):
        return await self._admin.usage(request)


def add_auth_services(server, store, counters, identities: IdentityCache,
                      settings: AuthSettings) -> None:
    """The four servicers of an auth replica, registered on `server` (a MeshServer)."""
    server.add_service(external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
                       ExternalAuthorizationServicer(identities),
                       "envoy.service.auth.v3.Authorization")
    server.add_service(rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
                       RateLimitServicer(EdgeLimits(counters, identities,
                                                    settings.limits_fail_open)),
                       "envoy.service.ratelimit.v3.RateLimitService")
    server.add_service(auth_pb2_grpc.add_UsageServiceServicer_to_server,
                       UsageServicer(Accounting(store, counters, identities,
                                                settings.reservation_seconds,
                                                settings.limits_fail_open)),
                       "meshllm.auth.v1.UsageService")
    server.add_service(auth_pb2_grpc.add_AuthServiceServicer_to_server,
                       AuthAdminServicer(Admin(store), identities),
                       "meshllm.auth.v1.AuthService")
