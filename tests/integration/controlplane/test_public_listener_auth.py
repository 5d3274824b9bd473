"""The public listener's identity strip, ext_authz and rate limit in a real Envoy, as the
control plane configures them.

What is under test is Envoy's side: which headers reach the check, how a denial or an outage
reaches a gRPC client, what descriptor the rate limit service gets. So the auth replica here is
a stand-in that answers Envoy's own APIs (envoy.service.auth.v3, envoy.service.ratelimit.v3) by
fixed rules, and the router a stand-in that answers with the metadata it received; the real
auth service's decisions are tested with it.
"""
import base64
import json

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2_grpc
from grpc_status import rpc_status

from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.registration import ReplicaRegistration
from tests.integration.controlplane.envoy_mesh import eventually, serve_and_register

GENERATE = "/meshllm.inference.v1.InferenceService/Generate"
ADMIN = "/meshllm.auth.v1.AuthService/ListTenants"
RESERVE = "/meshllm.auth.v1.UsageService/Reserve"
FORGED = (("x-meshllm-tenant", "forged"), ("x-meshllm-policy-bin", b"forged"),
          ("x-meshllm-policy-version", "99"), ("x-meshllm-key-id", "forged"))
POLICY = b"\x00\x01policy\xff"


def header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def status_details(code: int, message: str, detail) -> str:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status = status_pb2.Status(code=code, message=message, details=[packed])
    return base64.b64encode(status.SerializeToString()).decode()


class StandInAuth(external_auth_pb2_grpc.AuthorizationServicer,
                  rls_pb2_grpc.RateLimitServiceServicer):
    """Keys by rule: "Bearer <tenant>" is that tenant's key, "Bearer revoked" and no key are
    UNAUTHENTICATED, "Bearer member" is PERMISSION_DENIED. Tenant "t-over" is over its rate
    limit, and for "t-rls-down" the rate limit answer fails."""

    def __init__(self):
        self.checked_headers: list[dict[str, str]] = []
        self.rate_limit_requests: list[rls_pb2.RateLimitRequest] = []
        self.replica: "StandIn | None" = None

    async def Check(self, request, context):
        headers = dict(request.attributes.request.http.headers)
        self.checked_headers.append(headers)
        key = headers.get("authorization", "").removeprefix("Bearer ")
        if key in ("", "revoked"):
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
                    body=f"API key {key or 'missing'}"))
        if key == "member":
            message = "the key's role is member; this call needs admin"
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                    headers=[header("grpc-status-details-bin", status_details(
                        code_pb2.PERMISSION_DENIED, message,
                        error_details_pb2.ErrorInfo(reason="ADMIN_ONLY")))],
                    body=message))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(headers=[
                header("x-meshllm-tenant", key),
                header("x-meshllm-policy-bin", base64.b64encode(POLICY).decode()),
                # Tenants named t* have a request limit; others (e.g. "free") have none.
                *([header("x-meshllm-requests-per-minute", "60")] if key.startswith("t")
                  else [])]))

    async def ShouldRateLimit(self, request, context):
        self.rate_limit_requests.append(request)
        tenant = dict((e.key, e.value) for e in request.descriptors[0].entries)["tenant"]
        if tenant == "t-rls-down":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "counters unreachable")
        if tenant != "t-over":
            return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        message = "tenant t-over: 60 requests per minute used; retry in 12 s"
        return rls_pb2.RateLimitResponse(
            overall_code=rls_pb2.RateLimitResponse.OVER_LIMIT,
            statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(
                code=rls_pb2.RateLimitResponse.OVER_LIMIT,
                current_limit=rls_pb2.RateLimitResponse.RateLimit(
                    requests_per_unit=60, unit=rls_pb2.RateLimitResponse.RateLimit.MINUTE),
                limit_remaining=0, duration_until_reset=duration_pb2.Duration(seconds=12))],
            response_headers_to_add=[base_pb2.HeaderValue(
                key="grpc-status-details-bin", value=status_details(
                    code_pb2.RESOURCE_EXHAUSTED, message,
                    error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=12))))],
            raw_body=message.encode())


class StandIn:
    """A gRPC server with health that registers as a replica of `service`."""

    def __init__(self, name: str, service: str):
        self.name, self.service = name, service
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self.server)
        self.registration: ReplicaRegistration | None = None
        self.port = 0

    def answer(self, full_service: str, *methods: str) -> None:
        """Answers each method with its name and the request's x-meshllm-* metadata."""
        async def reply(request: bytes, context) -> bytes:
            metadata = {key: (base64.b64encode(value).decode() if key.endswith("-bin")
                              else value)
                        for key, value in context.invocation_metadata()
                        if key.startswith("x-meshllm-")}
            return json.dumps({"by": self.name, "metadata": metadata}).encode()

        handler = grpc.unary_unary_rpc_method_handler(reply)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            full_service, {method: handler for method in methods})])

    async def start(self, controlplane_port: int) -> "StandIn":
        self.port, self.registration = await serve_and_register(
            self.server, controlplane_port,
            registry_pb2.Replica(replica_id=self.name, service=self.service))
        return self

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
        await self.server.stop(0)


@pytest.fixture(scope="module")
async def router(mesh):
    router = StandIn("router-1", "router")
    router.answer("meshllm.inference.v1.InferenceService", "Generate")
    mesh.replicas.append(await router.start(mesh.controlplane_port))
    await eventually(lambda: mesh.health_flags("router", router.port) == "healthy", 5)
    return router


@pytest.fixture(scope="module")
async def public(mesh):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.public_port}") as channel:
        yield channel


async def call(channel, path: str, key: str | None = None, metadata=()) -> dict:
    sent = (*((("authorization", f"Bearer {key}"),) if key is not None else ()), *metadata)
    reply = await channel.unary_unary(path)(b"", timeout=5, metadata=sent)
    return json.loads(reply)


async def refusal(channel, path: str, key: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, path, key)
    return raised.value


async def test_before_any_auth_replica_public_calls_fail_closed_with_unavailable(
        mesh, router, public):
    assert "auth::" in mesh.admin("/clusters") and not mesh.endpoints("auth")
    error = await refusal(public, GENERATE, "t1")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "auth service did not answer" in error.details()
    assert mesh.stat("http.public.ext_authz.error") >= 1


@pytest.fixture(scope="module")
async def auth(mesh, router):
    stand_in = StandInAuth()
    stand_in.replica = replica = StandIn("auth-1", "auth")
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(stand_in, replica.server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(stand_in, replica.server)
    replica.answer("meshllm.auth.v1.AuthService", "ListTenants")
    replica.answer("meshllm.auth.v1.UsageService", "Reserve")
    mesh.replicas.append(await replica.start(mesh.controlplane_port))
    await eventually(lambda: mesh.health_flags("auth", replica.port) == "healthy", 5)
    return stand_in


async def test_a_checked_call_reaches_the_router_with_auths_tenant_and_policy(auth, public):
    reply = await call(public, GENERATE, "t1")
    assert reply["by"] == "router-1"
    assert reply["metadata"]["x-meshllm-tenant"] == "t1"
    assert base64.b64decode(reply["metadata"]["x-meshllm-policy-bin"]) == POLICY


async def test_client_sent_identity_headers_reach_neither_auth_nor_the_router(auth, public):
    reply = await call(public, GENERATE, "t1", metadata=FORGED)
    assert reply["metadata"]["x-meshllm-tenant"] == "t1"
    assert base64.b64decode(reply["metadata"]["x-meshllm-policy-bin"]) == POLICY
    assert "x-meshllm-policy-version" not in reply["metadata"]
    assert "x-meshllm-key-id" not in reply["metadata"]
    assert not [h for h in auth.checked_headers[-1] if h.startswith("x-meshllm-")]


@pytest.mark.parametrize("key", [None, "revoked"])
async def test_a_missing_or_revoked_key_is_unauthenticated_with_auths_reason(auth, public, key):
    error = await refusal(public, GENERATE, key)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == f"API key {key or 'missing'}"


async def test_a_denial_is_permission_denied_with_auths_reason_and_error_details(auth, public):
    error = await refusal(public, ADMIN, "member")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "the key's role is member; this call needs admin"
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(error).details[0].Unpack(info)
    assert info.reason == "ADMIN_ONLY"


async def test_inference_calls_send_the_tenant_descriptor_to_the_rate_limit_service(
        auth, public):
    await call(public, GENERATE, "t1", metadata=FORGED)
    request = auth.rate_limit_requests[-1]
    assert request.domain == "meshllm"
    assert [[(e.key, e.value) for e in d.entries] for d in request.descriptors] == [
        [("tenant", "t1"), ("limit", "60")]]


async def test_a_tenant_without_a_request_limit_costs_no_rate_limit_call(auth, public):
    before = len(auth.rate_limit_requests)
    await call(public, GENERATE, "free")
    assert len(auth.rate_limit_requests) == before


async def test_over_the_limit_is_resource_exhausted_with_retry_info(auth, public):
    error = await refusal(public, GENERATE, "t-over")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "tenant t-over: 60 requests per minute used; retry in 12 s"
    retry = error_details_pb2.RetryInfo()
    assert rpc_status.from_call(error).details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 12
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("x-ratelimit-remaining") == "0"


async def test_a_failed_rate_limit_answer_fails_closed_with_unavailable(auth, public):
    error = await refusal(public, GENERATE, "t-rls-down")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "rate limit service (auth) did not answer" in error.details()


async def test_the_admin_api_is_public_and_checked_and_not_rate_limited(auth, public):
    before = len(auth.rate_limit_requests)
    assert (await call(public, ADMIN, "t1"))["by"] == "auth-1"
    assert len(auth.rate_limit_requests) == before


async def test_the_usage_api_is_on_the_mesh_listener_only(auth, public, channel):
    assert (await channel.unary_unary(RESERVE)(b"", timeout=5)).startswith(b'{"by": "auth-1"')
    error = await refusal(public, RESERVE, "t1")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_an_auth_replica_that_died_fails_public_calls_closed_with_unavailable(
        auth, public):
    await auth.replica.server.stop(0)  # killed: its lease runs on, its port refuses
    error = await refusal(public, GENERATE, "t1")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "auth service did not answer" in error.details()
