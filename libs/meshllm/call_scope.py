"""What every served call gets around it: the caller's request id and trace, a server span
for the whole call (streams: until the last message), log fields, and its outcome counted."""
import asyncio
import time
import uuid

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshllm.logging import bind_request
from meshllm.metrics import RPC_SECONDS, RPCS_HANDLED
from meshllm.request_context import REQUEST_ID_HEADER, set_request_id
from meshllm.tracing import current_trace_id, extract_context

_tracer = trace.get_tracer("meshllm.grpc")


class _CallsInFlight:
    count = 0


def calls_in_flight() -> int:
    """Calls this process is serving now (health checks and reflection aside): the demand
    its heartbeat reports to the autoscaler."""
    return _CallsInFlight.count


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class CallScope:
    """Enters the request's trace and log context for one call, and records its outcome."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext):
        self.method, self.context = method, context
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        self._parent = extract_context(metadata)

    def __enter__(self) -> "CallScope":
        _CallsInFlight.count += 1
        self.started = time.perf_counter()
        self._token = otel_context.attach(self._parent)
        self.span = _tracer.start_span(self.method.lstrip("/"), kind=SpanKind.SERVER)
        self._span_token = otel_context.attach(trace.set_span_in_context(self.span))
        set_request_id(self.request_id)
        bind_request(request_id=self.request_id, trace_id=current_trace_id())
        self.span.set_attribute("rpc.system", "grpc")
        self.span.set_attribute("meshllm.request_id", self.request_id)
        return self

    def __exit__(self, exc_type, error, tb):
        _CallsInFlight.count -= 1
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
