"""Tenants calling a LocalMesh through Envoy's public listener, for the tenancy tests: the admin
API with the dev tenant's admin key (never the store), Generate and ListModels with a tenant's
key, refusals with their google.rpc details, and what Envoy saw of the auth replicas."""
import asyncio
import itertools

import grpc
import h2.config
import h2.connection
import h2.events

from deploy.local.envoy_admin import admin_get
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from meshllm.api_key import KeyedStub, bearer
from tests.status_details import error_details
from tests.tenant_headers import UNMODERATED

GENERATE_PATH = "/meshllm.inference.v1.InferenceService/Generate"
_tenant_numbers = itertools.count(1)


class TenantClient:
    """One channel to the public listener; `admin` carries the mesh's admin key."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.public}")
        self.admin = KeyedStub(auth_pb2_grpc.AuthServiceStub(self.channel), mesh.api_key)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def new_tenant(self, policy: auth_pb2.Policy) -> tuple[str, str, str]:
        """A tenant with `policy` and one client key: (tenant id, key secret, key id).

        A policy that does not set `moderation` gets moderation off: these tests count the
        tokens clients receive (token ids, which moderated deltas do not carry); moderation
        has its own tests (test_moderation.py)."""
        if not policy.HasField("moderation"):
            policy = auth_pb2.Policy.FromString(policy.SerializeToString())
            policy.moderation.CopyFrom(UNMODERATED.moderation)
        tenant_id = f"tenant-{next(_tenant_numbers)}"
        await self.admin.CreateTenant(auth_pb2.CreateTenantRequest(tenant_id=tenant_id,
                                                                   policy=policy), timeout=10)
        created = await self.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
            tenant_id=tenant_id, name="tenancy-test", role=auth_pb2.API_KEY_ROLE_CLIENT),
            timeout=10)
        return tenant_id, created.secret, created.key.id

    async def generate(self, key: str | None, prompt: str = "hi", max_tokens: int = 4,
                       metadata=(), **fields) -> inference_pb2.FinishedEvent:
        """The finished event of one whole Generate call; AioRpcError if it was refused."""
        finished = None
        async for event in self.inference.Generate(
                inference_pb2.GenerateRequest(prompt=prompt, sampling={"max_tokens": max_tokens},
                                              **fields),
                metadata=(*(bearer(key) if key is not None else ()), *metadata), timeout=30):
            if event.HasField("finished"):
                finished = event.finished
        assert finished is not None, "the stream ended without a finished event"
        return finished

    async def cancel_after(self, key: str, event_kind: str, prompt: str, max_tokens: int,
                           **fields) -> int:
        """Starts Generate and cancels it once the first `event_kind` event ("started" or
        "delta") arrives; returns the tokens the client received."""
        call = self.inference.Generate(
            inference_pb2.GenerateRequest(prompt=prompt, sampling={"max_tokens": max_tokens},
                                          **fields), metadata=bearer(key), timeout=30)
        received = 0
        async for event in call:
            received += len(event.delta.token_ids)
            if event.HasField(event_kind):
                break
        call.cancel()
        return received

    async def list_models(self, key: str | None, metadata=()) -> None:
        """One cheap inference API call: checked, rate limited, but nothing to generate."""
        await self.inference.ListModels(
            inference_pb2.ListModelsRequest(),
            metadata=(*(bearer(key) if key is not None else ()), *metadata), timeout=10)

    async def usage(self, tenant_id: str, group_by_label: str = "") -> auth_pb2.GetUsageResponse:
        return await self.admin.GetUsage(auth_pb2.GetUsageRequest(
            tenant_id=tenant_id, group_by_label=group_by_label), timeout=10)

    async def settled_usage(self, tenant_id: str, requests: int, group_by_label: str = "",
                            within: float = 15.0) -> auth_pb2.GetUsageResponse:
        """GetUsage once the ledger holds `requests` calls (the router settles after the
        stream, in the background) and a second read a moment later agrees, so a settlement
        that would count a call twice has had its chance to show."""
        deadline = asyncio.get_running_loop().time() + within
        while (usage := await self.usage(tenant_id, group_by_label)).total.requests < requests:
            assert asyncio.get_running_loop().time() < deadline, (
                f"the ledger holds {usage.total.requests} of {requests} calls after {within} s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        again = await self.usage(tenant_id, group_by_label)
        assert again == usage, "the ledger still changed after every call was settled"
        return usage


async def refusal(call) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded; it should have been refused")


def reason(error: grpc.aio.AioRpcError) -> str:
    return error_details(error)["ErrorInfo"].reason


async def auth_rpcs_by_replica(mesh) -> dict[str, int]:
    """Requests Envoy has sent each auth replica (ext_authz checks, rate-limit questions and
    Reserve/Settle), from its per-host counters: which replicas really answered a burst."""
    names = {f"{mesh.options.host}:{process.port}": name for name, process in mesh.auth.items()}
    _, body = await admin_get(mesh.options.ports.admin, "/clusters")
    counts = {name: 0 for name in mesh.auth}
    for line in body.splitlines():
        fields = line.split("::")
        if len(fields) == 4 and fields[0] == "auth" and fields[2] == "rq_total" \
                and fields[1] in names:
            counts[names[fields[1]]] = int(fields[3])
    return counts


async def raw_call(port: int, path: str, headers: list[tuple[bytes, bytes]],
                   body: bytes = b"") -> dict[bytes, bytes]:
    """One unary gRPC call over raw HTTP/2, for header values grpc's own client will not send
    (non-ASCII); the response's headers and trailers together."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(stream, [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"), *headers])
    connection.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    answer: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(10):
            while True:
                writer.write(connection.data_to_send())
                await writer.drain()
                data = await reader.read(65536)
                assert data, "the connection closed before the call ended"
                for event in connection.receive_data(data):
                    if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                        answer.update(event.headers)
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        return answer
    finally:
        writer.close()
