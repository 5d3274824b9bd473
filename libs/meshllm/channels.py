"""Channels for calls between services: every call carries the request id and the trace on,
and records a client span that lasts as long as the call, streams included."""
import asyncio

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshllm.request_context import REQUEST_ID_HEADER, current_request_id
from meshllm.tracing import inject_context

_tracer = trace.get_tracer("meshllm.grpc.client")
_finishing: set[asyncio.Task] = set()


# The peer (Envoy, the control plane) may restart: the default back-off grows to 120 s.
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000))


def mesh_channel(target: str, intercepted: bool = True) -> grpc.aio.Channel:
    """A channel to another service. `intercepted=False` leaves out the interceptors, which
    cost a task and three generator hops on every streamed message: a caller on the stream
    path carries the context itself with `carried_metadata` under a `client_span`."""
    if not intercepted:
        return grpc.aio.insecure_channel(target, options=RECONNECT_OPTIONS)
    # grpc.aio files each interceptor under the first kind it is an instance of, so each
    # kind of call needs an interceptor of its own.
    return grpc.aio.insecure_channel(
        target, options=RECONNECT_OPTIONS,
        interceptors=[UnaryContextInterceptor(), StreamContextInterceptor()])


def client_span(method: str) -> trace.Span:
    """A client span for one outgoing call; the caller ends it when the call ends."""
    return _tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT,
                              attributes={"rpc.system": "grpc"})


def carried_metadata(span: trace.Span) -> list[tuple[str, str]]:
    """The request id and the trace (as `span`'s child) for an outgoing call's metadata."""
    carried = {REQUEST_ID_HEADER: current_request_id()}
    inject_context(carried, trace.set_span_in_context(span))
    return [(key, value) for key, value in carried.items() if value]


def end_span(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.name)
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class UnaryContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await _carry_context(continuation, details, request)


class StreamContextInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await _carry_context(continuation, details, request)


async def _carry_context(continuation, details: grpc.aio.ClientCallDetails, request):
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    span = client_span(method)
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carried_metadata(span):
        if key not in metadata:
            metadata.add(key, value)
    call = await continuation(grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials,
        details.wait_for_ready), request)
    call.add_done_callback(lambda done: _end_when_known(span, done))
    return call


def _end_when_known(span, call) -> None:
    # The done callback cannot await the call's status; a task can, at once (it is known).
    task = asyncio.get_running_loop().create_task(_end(span, call))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


async def _end(span, call) -> None:
    end_span(span, await call.code())
