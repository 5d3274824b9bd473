"""Errors a caller can act on: a gRPC code, a message, and `google.rpc` details.

Every refusal carries an ErrorInfo with a stable `reason` (clients branch on it, never on the
message), a BadRequest naming the field for bad input, and a RetryInfo when retrying later
can succeed (docs/architecture.md, Errors)."""
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from meshllm.protos import duration

ERROR_DOMAIN = "meshllm.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class CallRefused(Exception):
    """A call the service will not or cannot serve, as the caller will see it."""

    code: grpc.StatusCode
    message: str
    reason: str
    field: str = ""
    """The request field at fault (a BadRequest field violation), when there is one."""
    retry_after: float | None = None
    """Seconds after which a retry can succeed (RetryInfo), when one can."""
    facts: dict[str, str] | None = None
    """What else the caller may need to act on (ErrorInfo metadata)."""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        return status_with_details(self.code, self.message, self.reason, self.field,
                                   self.retry_after, self.facts)


def status_with_details(code: grpc.StatusCode, message: str, reason: str, field: str = "",
                        retry_after: float | None = None,
                        facts: dict[str, str] | None = None) -> grpc.Status:
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN,
                                           metadata=facts or {})]
    if field:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
    if retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=duration(retry_after)))
    packed = []
    for detail in details:
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    return rpc_status.to_status(status_pb2.Status(
        code=code.value[0], message=message, details=packed))


async def refuse(context: grpc.aio.ServicerContext, refusal: CallRefused) -> None:
    """Ends the call with the refusal's status and details (raises, like context.abort)."""
    status = refusal.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def details_of(trailing_metadata) -> status_pb2.Status | None:
    """The google.rpc.Status a peer sent in its trailers, if it sent one."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None
