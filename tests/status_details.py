"""The google.rpc details of a refused call, as a client reads them (tests of every tier)."""
import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAIL_TYPES = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                error_details_pb2.RetryInfo)


def unpacked(status: status_pb2.Status) -> dict[str, Message]:
    """The status's details by message name ("ErrorInfo", "BadRequest", "RetryInfo")."""
    details: dict[str, Message] = {}
    for packed in status.details:
        kind = next((k for k in DETAIL_TYPES if packed.Is(k.DESCRIPTOR)), None)
        assert kind is not None, f"unexpected detail {packed.type_url}"
        assert kind.__name__ not in details, f"two {kind.__name__} details"
        details[kind.__name__] = kind()
        packed.Unpack(details[kind.__name__])
    return details


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Message]:
    """The details the server sent with `error`; from_call also checks that the status in the
    trailer has the call's own code and message."""
    status = rpc_status.from_call(error)
    assert status is not None, (f"{error.code().name} {error.details()!r} came without "
                                "google.rpc details")
    return unpacked(status)


def violated_fields(details: dict[str, Message]) -> list[str]:
    return [violation.field for violation in details["BadRequest"].field_violations]
