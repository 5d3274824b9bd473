"""The pipeline's last stage: one generation through Envoy's mesh listener, as public events."""
import time

import grpc
from prometheus_client import Counter

from meshllm.api.generation.v1 import generation_pb2
from meshllm.api.inference.v1 import inference_pb2
from meshllm.channels import carried_metadata, client_span, end_span
from meshllm.logging import get_logger
from meshllm.protos import MODEL_HEADER, duration
from meshllm.errors import CallRefused
from services.router.delta_coalescing import DELTA_TAG, FINISHED_TAG, STARTED_TAG, coalesced
from services.router.errors import PassedOn
from services.router.pipeline import Events, GenerationCall

GENERATE_METHOD = "/meshllm.generation.v1.GenerationService/Generate"
NO_REPLICA_REASON = "NO_REPLICA_AVAILABLE"
"""Envoy had no replica of the model that took the call (none, or every one refused)."""

MIDSTREAM_FAILURES = Counter(
    "meshllm_router_midstream_failures",
    "Generation streams that broke after their first event (Envoy cannot retry these)",
    ["model"],
)
# Codes that describe the request itself; they reach the client as generation said them.
_CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
log = get_logger(__name__)


def to_generation_request(call: GenerationCall) -> generation_pb2.GenerateRequest:
    request = call.request
    downstream = generation_pb2.GenerateRequest(
        request_id=call.request_id, model=call.model.pool.name, sampling=request.sampling)
    if request.WhichOneof("input") == "chat":
        downstream.chat.CopyFrom(request.chat)
    else:
        downstream.prompt = request.prompt
    return downstream


class GenerationClient:
    """Calls generation through Envoy's mesh listener and forwards its stream: the started
    and finished events rebuilt for the public API, deltas passed through as bytes."""

    def __init__(self, channel: grpc.aio.Channel):
        # No response deserializer: messages arrive as the bytes generation sent.
        self._generate = channel.unary_stream(
            GENERATE_METHOD,
            request_serializer=generation_pb2.GenerateRequest.SerializeToString)

    async def __call__(self, call: GenerationCall) -> Events:
        model = call.model.pool.name
        span = client_span(GENERATE_METHOD)
        stream = self._generate(
            to_generation_request(call),
            timeout=call.time_remaining(),
            metadata=(*carried_metadata(span), (MODEL_HEADER, model)),
        )
        replica, first_token_at, finished = "", None, False
        code = grpc.StatusCode.CANCELLED
        try:
            async for raw in coalesced(stream):
                tag = raw[0] if raw else 0
                if tag == DELTA_TAG:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    yield raw
                elif tag == STARTED_TAG:
                    started = generation_pb2.GenerateResponse.FromString(raw).started
                    replica = call.replica = started.replica_id
                    call.prompt_tokens = started.prompt_tokens
                    started = inference_pb2.StartedEvent(
                        request_id=call.request_id, model=model, replica=replica,
                        route_reason=call.model.reason)
                    if call.cold_start is not None:
                        started.cold_start.CopyFrom(duration(call.cold_start))
                    yield inference_pb2.GenerateResponse(started=started)
                elif tag == FINISHED_TAG:
                    finished = True
                    upstream = generation_pb2.GenerateResponse.FromString(raw).finished
                    yield inference_pb2.GenerateResponse(
                        finished=self._finished(call, upstream, first_token_at))
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise self._rejection(error, model, replica) from None
        finally:
            # However this generator ends (the caller went away, the task was cancelled while
            # blocked on a slow client), generation must stop working for nobody.
            stream.cancel()
            end_span(span, code)
        if not finished:
            MIDSTREAM_FAILURES.labels(model).inc()
            log.warning("truncated_stream", model=model, replica=replica)
            raise CallRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"replica {replica or '?'} of model {model!r} ended the stream without a "
                "finished event: the answer is truncated; retry the request",
                reason="STREAM_TRUNCATED", retry_after=0.0)

    @staticmethod
    def _finished(call: GenerationCall, upstream: inference_pb2.FinishedEvent,
                  first_token_at: float | None) -> inference_pb2.FinishedEvent:
        """Usage as the replica counted it; timings as the client sees them from the router."""
        now = time.perf_counter()
        timings = inference_pb2.Timings(
            queued=upstream.timings.queued,
            time_to_first_token=duration((first_token_at or now) - call.arrived),
            total=duration(now - call.arrived),
        )
        return inference_pb2.FinishedEvent(
            finish_reason=upstream.finish_reason, usage=upstream.usage, timings=timings)

    @staticmethod
    def _rejection(error: grpc.aio.AioRpcError, model: str, replica: str) -> CallRefused:
        code, details = error.code(), error.details() or ""
        if code in _CALLER_CODES:
            return PassedOn(code, details, error.trailing_metadata())
        if replica:
            # Past the response headers Envoy can neither retry nor eject: say so and count it.
            MIDSTREAM_FAILURES.labels(model).inc()
            log.warning("midstream_failure", model=model, replica=replica, code=code.name,
                        detail=details)
            return CallRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"replica {replica} of model {model!r} failed mid-stream ({code.name}: "
                f"{details}); the text received so far is incomplete, retry the request",
                reason="REPLICA_FAILED_MIDSTREAM", retry_after=0.0)
        return CallRefused(
            grpc.StatusCode.UNAVAILABLE,
            f"no replica of model {model!r} could take the request ({code.name}: {details}); "
            "retry shortly", reason=NO_REPLICA_REASON, retry_after=1.0)
