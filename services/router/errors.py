"""Refusals the router answers with: its own, and generation's passed on unchanged."""
import grpc

from meshllm.errors import STATUS_DETAILS_KEY, CallRefused


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
        self._details = [(key, value) for key, value in trailing_metadata or ()
                         if key == STATUS_DETAILS_KEY]

    def to_status(self) -> grpc.Status:
        if not self._details:
            return super().to_status()
        return _Status(self.code, self.message, tuple(self._details))


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata
