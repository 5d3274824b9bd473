"""What the auth service tests share: requests they build, and how they read answers."""
import asyncio
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2
from meshllm.api.auth.v1 import auth_pb2
from tests.integration.auth.auth_server import headers_of, status_in_header
from tests.status_details import unpacked

REPO = Path(__file__).resolve().parents[3]
Code = grpc.StatusCode
Policy = auth_pb2.Policy
OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
PRICES = {"tiny": auth_pb2.ModelPrice(input_per_1k_micro_usd=1_000,  # 1 micro-USD a token
                                      output_per_1k_micro_usd=1_000)}


async def add_tenant(auth, tenant_id: str = "acme", policy: Policy | None = None):
    return (await auth.admin.CreateTenant(auth_pb2.CreateTenantRequest(
        tenant_id=tenant_id, policy=policy))).tenant


async def add_key(auth, tenant_id: str = "acme", role=auth_pb2.API_KEY_ROLE_CLIENT):
    return await auth.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=tenant_id, name="laptop", role=role))


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def random_part(secret: str) -> str:
    """What follows mk_live_<key id>_ (which may itself hold "_")."""
    return secret.split("_", 3)[3]


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def assert_denied(response, code: grpc.StatusCode, http_status: int, reason: str) -> None:
    """A denial as Envoy turns it into the client's reply: status, HTTP code, a body, and
    google.rpc details with the reason in grpc-status-details-bin."""
    assert response.status.code == code.value[0], response
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    assert denied.status.code == http_status
    assert denied.body and denied.body == response.status.message
    details = status_in_header(headers_of(denied.headers)["grpc-status-details-bin"])
    assert (details.code, details.message) == (code.value[0], denied.body)
    assert unpacked(details)["ErrorInfo"].reason == reason


def is_allowed(response) -> bool:
    return response.status.code == 0 and response.WhichOneof("http_response") == "ok_response"


def reserve(tenant_id="acme", request_id="r1", prompt=40, completion=60, labels=None):
    return auth_pb2.ReserveRequest(request_id=request_id, tenant_id=tenant_id, model="tiny",
                                   max_prompt_tokens=prompt, max_completion_tokens=completion,
                                   labels=labels)


def settle(tenant_id="acme", request_id="r1", prompt=30, completion=20, model="tiny",
           labels=None):
    return auth_pb2.SettleRequest(
        request_id=request_id, tenant_id=tenant_id, model=model, replica="generation-1",
        prompt_tokens=prompt, completion_tokens=completion, outcome="STOP", labels=labels,
        time_to_first_token=duration_pb2.Duration(nanos=50_000_000),
        total=duration_pb2.Duration(seconds=1))


async def wait_until(predicate, within_seconds: float) -> float:
    """Seconds until `await predicate()` held; fails after `within_seconds`."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < within_seconds, f"not within {within_seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started
