"""AuditService: a tenant's admin reads its own verdict trail. Glue only: the tenant from the
headers Envoy set, the store's records out as protos."""
import grpc

from meshllm.api.moderation.v1 import moderation_pb2, moderation_pb2_grpc
from meshllm.tenancy import Tenancy
from services.moderation.audit_store import AuditStore

MAX_REQUEST_ID_CHARS = 128


class AuditServicer(moderation_pb2_grpc.AuditServiceServicer):
    def __init__(self, store: AuditStore, public_key: bytes):
        """`public_key`: the raw 32-byte Ed25519 key the checkpoints are signed with."""
        self._store = store
        self._public_key = public_key

    async def ListVerdicts(self, request: moderation_pb2.ListVerdictsRequest,
                           context: grpc.aio.ServicerContext
                           ) -> moderation_pb2.ListVerdictsResponse:
        tenant = await _tenant(context)
        request_id = request.request_id
        if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters "
                                f"(the id in the call's started event), got {len(request_id)}")
        records = await self._store.verdicts_for(tenant, request_id)
        if not records:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no verdicts recorded for request {request_id!r} of tenant "
                                f"{tenant!r}; check the id, and that the call was moderated")
        return moderation_pb2.ListVerdictsResponse(records=records)

    async def ExportAuditLog(self, request: moderation_pb2.ExportAuditLogRequest,
                             context: grpc.aio.ServicerContext):
        tenant = await _tenant(context)
        if request.from_sequence < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "from_sequence must be 0 or more (0 or 1 sends the whole "
                                f"chain), got {request.from_sequence}")
        yield moderation_pb2.ExportAuditLogResponse(public_key=self._public_key)
        async for item in self._store.export(tenant, request.from_sequence):
            if isinstance(item, moderation_pb2.AuditRecord):
                yield moderation_pb2.ExportAuditLogResponse(record=item)
            else:
                yield moderation_pb2.ExportAuditLogResponse(checkpoint=item)


async def _tenant(context: grpc.aio.ServicerContext) -> str:
    tenancy = Tenancy.of(context.invocation_metadata())
    if tenancy is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "the call carries no tenant: call through Envoy's public listener "
                            "with an admin key")
    return tenancy.tenant
