"""What the CLI says when a call or its input fails: one line on stderr, never a traceback.

Exit 1: the mesh refused or failed the call. Exit 2: the command cannot be sent as given (a
policy file that does not parse, no API key), the code click gives its own usage errors."""
import grpc
from google.rpc import error_details_pb2

from meshllm.errors import details_of

CALL_FAILED_EXIT = 1
BAD_INPUT_EXIT = 2


class InputError(Exception):
    """Input the CLI refuses before calling anything, with a message a person can act on."""


def one_line(text: str) -> str:
    """Server messages may hold newlines or control characters; the terminal gets one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _detail_notes(error: grpc.Call) -> list[str]:
    """The google.rpc ErrorInfo reason and RetryInfo delay the server sent, if it sent any."""
    status = details_of(error.trailing_metadata())
    notes = []
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            notes.append(f"reason {info.reason}")
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            notes.append(f"retry after {retry.retry_delay.ToTimedelta().total_seconds():g}s")
    return notes


def call_error_line(error: grpc.RpcError) -> str:
    """`error: PERMISSION_DENIED: <the server's message> (reason X; retry after 1s)`."""
    if not isinstance(error, grpc.Call):  # every failed sync call is one; kept safe anyway
        return one_line(f"error: the call failed: {error}")
    notes = _detail_notes(error)
    line = f"error: {error.code().name}: {error.details() or 'no message'}"
    return one_line(line + (f" ({'; '.join(notes)})" if notes else ""))
