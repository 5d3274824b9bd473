"""The request id of the call being served: read from `x-request-id` (or made up) by the
server wrapper, carried on to every downstream call by `meshllm.channels`."""
import contextvars

REQUEST_ID_HEADER = "x-request-id"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def set_request_id(request_id: str) -> None:
    _request_id.set(request_id)
