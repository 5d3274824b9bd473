"""The pipeline's last stage: one generation through Envoy's mesh listener, as public events."""
import time

import grpc
from prometheus_client import Counter

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.logging import get_logger
from meshllm.protos import MODEL_HEADER, duration
from services.router.errors import RequestRejected
from services.router.pipeline import Events, GenerationCall

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
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = generation_pb2_grpc.GenerationServiceStub(channel)

    async def __call__(self, call: GenerationCall) -> Events:
        model = call.model.pool.name
        stream = self._stub.Generate(
            to_generation_request(call),
            timeout=call.time_remaining(),
            metadata=((MODEL_HEADER, model),),
        )
        replica, first_token_at = "", None
        try:
            async for event in stream:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    yield inference_pb2.GenerateResponse(delta=event.delta)
                elif kind == "started":
                    replica = event.started.replica_id
                    yield inference_pb2.GenerateResponse(started=inference_pb2.StartedEvent(
                        request_id=call.request_id, model=model, replica=replica,
                        route_reason=call.model.reason))
                elif kind == "finished":
                    yield inference_pb2.GenerateResponse(
                        finished=self._finished(call, event.finished, first_token_at))
        except grpc.aio.AioRpcError as error:
            raise self._rejection(error, model, replica) from None
        finally:
            # However this generator ends (the caller went away, the task was cancelled while
            # blocked on a slow client), generation must stop working for nobody.
            stream.cancel()

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
    def _rejection(error: grpc.aio.AioRpcError, model: str, replica: str) -> RequestRejected:
        code, details = error.code(), error.details() or ""
        if code in _CALLER_CODES:
            return RequestRejected(code, details)
        if replica:
            # Past the response headers Envoy can neither retry nor eject: say so and count it.
            MIDSTREAM_FAILURES.labels(model).inc()
            log.warning("midstream_failure", model=model, replica=replica, code=code.name,
                        detail=details)
            return RequestRejected(
                grpc.StatusCode.UNAVAILABLE,
                f"replica {replica} of model {model!r} failed mid-stream ({code.name}: "
                f"{details}); the text received so far is incomplete, retry the request")
        return RequestRejected(
            grpc.StatusCode.UNAVAILABLE,
            f"no replica of model {model!r} could take the request ({code.name}: {details}); "
            "retry shortly")
