"""Per-call context: request id, trace span, log fields and RPC metrics, for every hop.

A server interceptor gives every call the caller's `x-request-id` (or a new one) and
`traceparent`, runs the handler inside a server span (for streams: until the last message),
binds both ids to the logs, and counts the outcome. `meshllm.channels` carries them on.
"""
import asyncio
import contextvars
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshllm.logging import bind_request
from meshllm.metrics import RPC_SECONDS, RPCS_HANDLED
from meshllm.tracing import current_trace_id, extract_context

REQUEST_ID_HEADER = "x-request-id"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_tracer = trace.get_tracer("meshllm.grpc")


def current_request_id() -> str:
    return _request_id.get()


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        method = details.method
        parse = _lenient(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Unparseable:
    """Stands in for a request whose bytes did not parse, so the call can answer
    INVALID_ARGUMENT instead of grpc's UNKNOWN."""

    def __init__(self, error: Exception):
        self.error = error


def _lenient(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data) if deserializer else data
        except Exception as error:  # any parser failure is the caller's malformed input
            return _Unparseable(error)

    return parse


async def _reject_unparseable(request, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(request, _Unparseable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request to {method} is not a valid protobuf message for this method "
            f"({request.error}); generate the client from the published protos")


class _CallScope:
    """Enters the request's trace and log context for one call, and records its outcome."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext):
        self.method, self.context = method, context
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        self._parent = extract_context(metadata)

    def __enter__(self):
        self.started = time.perf_counter()
        self._token = otel_context.attach(self._parent)
        self.span = _tracer.start_span(self.method.lstrip("/"), kind=SpanKind.SERVER)
        self._span_token = otel_context.attach(trace.set_span_in_context(self.span))
        _request_id.set(self.request_id)
        bind_request(request_id=self.request_id, trace_id=current_trace_id())
        self.span.set_attribute("rpc.system", "grpc")
        self.span.set_attribute("meshllm.request_id", self.request_id)
        return self

    def __exit__(self, exc_type, error, tb):
        code = _code_of(self.context, error)
        RPCS_HANDLED.labels(self.method, code).inc()
        RPC_SECONDS.labels(self.method).observe(time.perf_counter() - self.started)
        self.span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            self.span.set_status(Status(StatusCode.ERROR, code))
        self.span.end()
        otel_context.detach(self._span_token)
        otel_context.detach(self._token)
        return False


def _wrap_unary(behaviour, method: str):
    async def unary(request, context):
        with _CallScope(method, context):
            await _reject_unparseable(request, context, method)
            return await behaviour(request, context)

    return unary


def _wrap_stream(behaviour, method: str):
    async def stream(request, context) -> AsyncIterator:
        with _CallScope(method, context):
            await _reject_unparseable(request, context, method)
            async with aclosing(behaviour(request, context)) as messages:
                async for message in messages:
                    yield message

    return stream
