"""One OpenTelemetry setup: W3C traceparent in and out of every gRPC hop, streams included."""
import sys

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


def configure_tracing(service: str, console: bool = False) -> None:
    """A caller's sampled trace is always recorded and carried on. A call that starts a trace
    here is recorded only when spans go somewhere (an exporter): recording spans nobody
    reads costs the stream path on every call; its ids are still made and carried on."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"meshllm-{service}"}),
                              sampler=ParentBased(root=ALWAYS_ON if console else ALWAYS_OFF))
    if console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


class _MetadataGetter(Getter):
    def get(self, carrier, key):
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier):
        return list(carrier.keys())


class _MetadataSetter(Setter):
    def set(self, carrier, key, value):
        carrier[key] = value


def extract_context(metadata: dict[str, str]):
    """The caller's trace context from incoming gRPC metadata."""
    return propagate.extract(metadata, getter=_MetadataGetter())


def inject_context(metadata: dict[str, str], context=None) -> dict[str, str]:
    """Adds traceparent (and tracestate) for `context` (default: the current one)."""
    propagate.inject(metadata, context=context, setter=_MetadataSetter())
    return metadata


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
