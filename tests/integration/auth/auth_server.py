"""An auth replica in the test's own process, wired as services/auth/__main__.py wires one: the
four servicers on a MeshServer bound to 127.0.0.1:0 (not registered with a control plane), a
real store, in-process counters and the identity cache following the store's revision.

    async with running_auth(f"sqlite:///{tmp_path / 'auth.db'}") as auth:
        await auth.admin.CreateTenant(...)

Two replicas on one database URL are two auth replicas sharing a store."""
import asyncio
import base64
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.rpc import status_pb2
from meshllm.api.auth.v1 import auth_pb2_grpc
from meshllm.api_key import KeyedStub
from meshllm.server import MeshServer
from meshllm.tasks import cancel_and_wait
from services.auth.config import AuthSettings
from services.auth.dev_tenant import ensure_dev_tenant
from services.auth.identity_cache import IdentityCache
from services.auth.server import add_auth_services
from services.auth.store import open_store
from services.auth.window_counters import InProcessWindowCounters

INFERENCE_PATH = "/meshllm.inference.v1.InferenceService/Generate"
ADMIN_PATH = "/meshllm.auth.v1.AuthService/ListTenants"


@dataclass
class AuthReplica:
    port: int
    channel: grpc.aio.Channel
    admin: auth_pb2_grpc.AuthServiceStub
    usage: auth_pb2_grpc.UsageServiceStub
    authz: external_auth_pb2_grpc.AuthorizationStub
    ratelimit: rls_pb2_grpc.RateLimitServiceStub
    admin_key: str = ""
    """The admin key `admin` sends, for clients the test starts itself (the CLI)."""

    async def check(self, authorization: str | None,
                    path: str = INFERENCE_PATH) -> external_auth_pb2.CheckResponse:
        """What Envoy's ext_authz filter asks for a call with this authorization header."""
        headers = {":path": path, "content-type": "application/grpc"}
        if authorization is not None:
            headers["authorization"] = authorization
        return await self.authz.Check(external_auth_pb2.CheckRequest(
            attributes=attribute_context_pb2.AttributeContext(
                request=attribute_context_pb2.AttributeContext.Request(
                    http=attribute_context_pb2.AttributeContext.HttpRequest(
                        method="POST", path=path, headers=headers)))), timeout=5)

    async def should_rate_limit(self, tenant: str | None) -> rls_pb2.RateLimitResponse:
        """What Envoy's rate-limit filter asks for a call of `tenant` (None: no descriptor)."""
        descriptors = [] if tenant is None else [
            {"entries": [{"key": "tenant", "value": tenant}]}]
        return await self.ratelimit.ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="meshllm", descriptors=descriptors), timeout=5)

    @classmethod
    def on(cls, channel: grpc.aio.Channel, port: int, admin_key: str) -> "AuthReplica":
        """Stubs for the auth service at the other end of `channel`; admin calls carry
        `admin_key`, as they would through Envoy."""
        return cls(port, channel, KeyedStub(auth_pb2_grpc.AuthServiceStub(channel), admin_key),
                   auth_pb2_grpc.UsageServiceStub(channel),
                   external_auth_pb2_grpc.AuthorizationStub(channel),
                   rls_pb2_grpc.RateLimitServiceStub(channel), admin_key)

    def raw(self, method: str):
        """A unary call that sends bytes as they are, for requests no stub would make."""
        return self.channel.unary_unary(method, request_serializer=lambda data: data,
                                        response_deserializer=lambda data: data)


def headers_of(options) -> dict[str, str]:
    """Envoy's HeaderValueOption (or HeaderValue) list as a dict."""
    return {(o.header if isinstance(o, base_pb2.HeaderValueOption) else o).key:
            (o.header if isinstance(o, base_pb2.HeaderValueOption) else o).value
            for o in options}


def status_in_header(value: str) -> status_pb2.Status:
    """grpc-status-details-bin as a header carries it: base64, padding maybe stripped."""
    return status_pb2.Status.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))


@asynccontextmanager
async def running_auth(database_url: str, *, cache_refresh_seconds: float = 0.25,
                       reservation_seconds: float = 3600.0) -> AsyncIterator[AuthReplica]:
    settings = AuthSettings(controlplane_address="", metrics_port=-1, host="127.0.0.1", port=0,
                            reservation_seconds=reservation_seconds, limits_fail_open=False)
    store = await open_store(database_url)
    counters = InProcessWindowCounters()
    identities = IdentityCache(store, cache_refresh_seconds)
    following = asyncio.create_task(identities.follow_store())
    server = MeshServer(settings, service="auth")
    add_auth_services(server, store, counters, identities, settings)
    try:
        with tempfile.TemporaryDirectory() as keys:
            admin_key = await ensure_dev_tenant(store, Path(keys) / "admin-key")
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield AuthReplica.on(channel, port, admin_key)
    finally:
        await server.drain(grace_seconds=0)
        await cancel_and_wait(following)
        await counters.close()
        await store.close()
