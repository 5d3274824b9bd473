"""Refusals the router answers with: its own, and generation's passed on unchanged."""
import grpc

from grpc_status import rpc_status

from meshllm.errors import CallRefused, details_of


class RequestRejected(CallRefused):
    """A request the router refuses itself; `reason` defaults to the code's name."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", field: str = "",
                 retry_after: float | None = None):
        super().__init__(code, message, reason or code.name, field, retry_after)


class PassedOn(CallRefused):
    """Generation's refusal of the request itself (bad input, full, past its deadline), given
    to the client as generation said it, google.rpc details included."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing_metadata):
        super().__init__(code, message, reason=code.name)
        self._status = details_of(trailing_metadata)

    def to_status(self) -> grpc.Status:
        return super().to_status() if self._status is None else rpc_status.to_status(self._status)
