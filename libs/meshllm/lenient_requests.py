"""Request bytes that do not parse are the caller's malformed input: INVALID_ARGUMENT naming
the method, instead of the UNKNOWN grpc answers when a deserializer raises."""
import grpc


class Unparseable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception):
        self.error = error


def lenient(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data) if deserializer else data
        except Exception as error:  # any parser failure is the caller's malformed input
            return Unparseable(error)

    return parse


def unparseable_message(method: str, request: Unparseable) -> str:
    return (f"the request to {method} is not a valid protobuf message for this method "
            f"({request.error}); generate the client from the published protos")


async def reject_unparseable(request, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(request, Unparseable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            unparseable_message(method, request))
