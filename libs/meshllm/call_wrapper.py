"""What wraps every method a service serves: each call in its `CallScope`, malformed bytes
refused, streams written by the wrapper, and a last resort for what a handler did not expect.

Streams use grpc.aio's writer API: the wrapper iterates the handler's generator under
`aclosing` and awaits `context.write` itself. grpc.aio drives a plain generator handler with
`async for` and never closes it, so a cancel that lands while a write is blocked (slow reader,
flow control) would leave the handler's cleanup — aborting the engine — to the garbage
collector. Here the cancel arrives in the wrapper's own await and `aclosing` runs the
handler's cleanup at once, on every exit path.

A stream handler may yield `bytes`: a response serialized already (the router forwards
generation's deltas this way without parsing them), written as they are."""
from contextlib import aclosing, asynccontextmanager

import grpc

from meshllm.call_scope import CallScope
from meshllm.errors import CallRefused, refuse
from meshllm.lenient_requests import (Unparseable, lenient, reject_unparseable,
                                      unparseable_message)
from meshllm.logging import get_logger

log = get_logger(__name__)


class WrappingRegistrar:
    """Stands in for the grpc.aio server while a generated `add_*Servicer_to_server` registers
    a servicer: each method handler is wrapped once, here. A server interceptor would do the
    same on every call, and grpc.aio's interceptor path costs ~80 µs of CPU a call."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        self._server.add_registered_method_handlers(service, {
            name: _wrap(handler, f"/{service}/{name}")
            for name, handler in method_handlers.items()})


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method not in self._wrapped:
            self._wrapped[details.method] = _wrap(self._inner.service(details), details.method)
        return self._wrapped[details.method]


def _wrap(handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler | None:
    if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
        return handler
    parse = lenient(handler.request_deserializer)
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
            response_serializer=_passing_bytes(handler.response_serializer),
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_client_stream(handler.stream_unary, method),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_bidi(handler.stream_stream, method),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )
    return handler


def _passing_bytes(serialize):
    def serializer(message) -> bytes:
        return message if message.__class__ is bytes else serialize(message)

    return serializer


async def _last_resort(error: Exception, context: grpc.aio.ServicerContext, method: str,
                       request_id: str) -> None:
    """INTERNAL naming the request id (the logs have the rest), never grpc's
    `UNKNOWN "Unexpected <class>"` with internal text."""
    log.exception("unexpected_error", method=method)
    await refuse(context, CallRefused(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (request id {request_id}); retry, and report the "
        "request id if it happens again", reason="INTERNAL_ERROR"))


@asynccontextmanager
async def _answering_failures(context: grpc.aio.ServicerContext, method: str, request_id: str):
    """A refusal ends the call with its status and details; anything unexpected, with the
    last resort. Both raise grpc's AbortError, so a failed call never carries on."""
    try:
        yield
    except CallRefused as refusal:
        await refuse(context, refusal)
    except grpc.aio.AbortError:
        raise
    except Exception as error:
        await _last_resort(error, context, method, request_id)


def _wrap_unary(behaviour, method: str):
    async def unary(request, context):
        with CallScope(method, context) as scope:
            await reject_unparseable(request, context, method)
            async with _answering_failures(context, method, scope.request_id):
                return await behaviour(request, context)

    return unary


def _wrap_stream(behaviour, method: str):
    async def stream(request, context) -> None:
        with CallScope(method, context) as scope:
            await reject_unparseable(request, context, method)
            async with _answering_failures(context, method, scope.request_id):
                async with aclosing(behaviour(request, context)) as messages:
                    async for message in messages:
                        await context.write(message)

    return stream


def _wrap_client_stream(behaviour, method: str):
    async def client_stream(requests, context):
        with CallScope(method, context) as scope:
            async with _answering_failures(context, method, scope.request_id):
                return await behaviour(_parsed(requests, method), context)

    return client_stream


def _wrap_bidi(behaviour, method: str):
    async def bidi(requests, context) -> None:
        with CallScope(method, context) as scope:
            async with _answering_failures(context, method, scope.request_id):
                async with aclosing(behaviour(_parsed(requests, method), context)) as messages:
                    async for message in messages:
                        await context.write(message)

    return bidi


async def _parsed(requests, method: str):
    """The stream's requests; one that did not parse ends the call as INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Unparseable):
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, unparseable_message(
                method, request), reason="UNPARSEABLE_REQUEST")
        yield request
